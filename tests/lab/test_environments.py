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
