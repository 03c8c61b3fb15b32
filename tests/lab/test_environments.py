"""A user's own Python environment on top of the facility's, and the gateway's check of the
environment a cluster asks to run from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from casa.lab.environments import (
    LAYER_FILE,
    check_cluster_env,
    create_layered_env,
    is_layered_on,
    site_packages,
)
from wheels import build_wheel

FACILITY = Path(sys.prefix)


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    env = tmp_path_factory.mktemp("user") / "envs" / "default"
    return create_layered_env(env, FACILITY)


def test_a_users_environment_sees_the_facilitys_packages_and_runs_its_commands(layered):
    assert is_layered_on(layered, FACILITY)
    layer = (site_packages(layered) / LAYER_FILE).read_text()
    assert layer == f"import site; site.addsitedir({str(site_packages(FACILITY))!r})\n"
    for command in ("casa", "dask-worker", "dask-scheduler", "jupyterhub-singleuser"):
        first = (layered / "bin" / command).read_text().splitlines()[0]
        assert first == f"#!{layered}/bin/python", command
    done = subprocess.run(
        [str(layered / "bin" / "python"), "-c",
         "import sys, coffea, dask_gateway; print(sys.prefix); print(coffea.__file__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    prefix, coffea_at = done.stdout.split()
    assert prefix == str(layered) and coffea_at.startswith(str(site_packages(FACILITY)))
    version = subprocess.run([str(layered / "bin" / "casa"), "--version"], capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert version.stdout.startswith("casa ")


def test_pip_installs_into_the_users_environment_only(layered, tmp_path):
    wheel = build_wheel(tmp_path, "casa_env_probe", factor=2.0)
    subprocess.run([str(layered / "bin" / "pip"), "install", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    assert (site_packages(layered) / "casa_env_probe" / "__init__.py").exists()
    assert not (site_packages(FACILITY) / "casa_env_probe").exists()
    out = subprocess.run(
        [str(layered / "bin" / "python"), "-c", "import casa_env_probe as p; print(p.FACTOR)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "2.0"
    # Making it again (a rebuilt facility) keeps what the user installed.
    create_layered_env(layered, FACILITY)
    assert (site_packages(layered) / "casa_env_probe" / "__init__.py").exists()


def test_the_gateway_takes_only_environments_no_other_account_can_change(layered, tmp_path):
    assert check_cluster_env(str(layered), "root") == layered.resolve()
    with pytest.raises(ValueError, match="is not an absolute path"):
        check_cluster_env("envs/default", "root")
    with pytest.raises(ValueError, match=r"lacks pyvenv.cfg, bin/dask-worker, bin/dask-scheduler"):
        check_cluster_env(str(tmp_path), "root")
    if os.geteuid() != 0:
        pytest.skip("needs root to give the environment to another account")
    copy = tmp_path / "theirs"
    shutil.copytree(layered, copy, symlinks=True)
    os.chmod(copy / "bin", 0o777)
    with pytest.raises(ValueError, match=r"bin may be changed by accounts other than root's"):
        check_cluster_env(str(copy), "root")
    os.chmod(copy / "bin", 0o755)
    os.chown(copy / "bin" / "dask-worker", 65534, 65534)  # nobody's
    with pytest.raises(ValueError, match=r"owner uid 65534"):
        check_cluster_env(str(copy), "no-such-account-here")


def test_casa_env_create_and_list_from_a_users_environment(layered, tmp_path):
    """``casa env create`` run from a user's environment (as in the lab's terminal) layers the
    new one on the facility's, not on the user's; ``list`` shows both; bad names and a second
    create are refused in one sentence and leave nothing behind."""
    home = tmp_path / "home"
    home.mkdir()
    casa = str(layered / "bin" / "casa")
    env = {"HOME": str(home), "PATH": f"{layered}/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

    def run(*args):
        return subprocess.run([casa, "env", *args], capture_output=True, text=True, env=env)

    made = run("create", "analysis")
    assert made.returncode == 0, made.stderr
    new = home / ".casa" / "envs" / "analysis"
    assert is_layered_on(new, FACILITY) and f"{new}/bin/pip install" in made.stdout
    listed = __import__("json").loads(run("list", "--json").stdout)
    assert listed["facility"] == str(FACILITY)
    assert [e["name"] for e in listed["environments"]] == ["analysis"]
    again = run("create", "analysis")
    assert again.returncode == 2 and "already" in again.stderr, again.stderr
    for bad in ("../escape", "facility", ".hidden", "a b"):
        refused = run("create", bad)
        assert refused.returncode == 2 and "cannot name an environment" in refused.stderr, bad
    assert sorted(p.name for p in (home / ".casa" / "envs").iterdir()) == ["analysis"]
