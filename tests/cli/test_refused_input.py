"""Input casa used to take silently or answer with a traceback: ``--chunksize 0``, and the
facility's catalog opened from a user's own account."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from accounts import unix_account

USER = "isk"
USER_CASA = Path("/opt/casa-user-env/bin/casa")


@pytest.mark.parametrize("chunksize", ["0", "-5"])
def test_chunksize_below_one_is_refused(casa, gen_dir, tmp_path, chunksize):
    out = tmp_path / "out"
    r = casa("run", "dimuon", "--files", gen_dir / "events_0000.root", "--out", out,
             "--chunksize", chunksize)  # fmt: skip
    assert r.code == 2, r.err
    assert f"--chunksize must be at least 1 entry (got {chunksize})" in r.err
    assert "Traceback" not in r.err and not out.exists()


@pytest.fixture()
def account():
    """A real account that is not the facility's."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the facility's catalog is root's; creates a Unix account)")
    if not USER_CASA.exists():
        reason = f"needs the users' environment {USER_CASA} (make install builds it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with unix_account(USER) as account:
        yield account


@pytest.fixture()
def facility_home():
    """A facility state folder as 'casa up' as root leaves it: others may pass, not list."""
    home = Path(tempfile.mkdtemp(prefix="casa-test-", dir="/tmp"))
    os.chmod(home, 0o711)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _root_casa(home: Path, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "casa", *args], capture_output=True, text=True,
                       env={**os.environ, "CASA_HOME": str(home)}, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p


def test_a_users_account_reads_the_catalog_without_its_database_and_changes_nothing(
    gen_dir, account, facility_home
):
    """The catalog's database is the facility's alone (it holds password hashes): another
    account's casa reads the datasets it may read from their export, the same as root's
    casa shows them, and a change is refused in one sentence."""
    _root_casa(facility_home, "datasets", "add", "demo", str(gen_dir))
    database = facility_home / "casa.sqlite"
    assert database.stat().st_mode & 0o777 == 0o600
    before = database.read_bytes()
    env = {"PATH": "/usr/bin:/bin", "HOME": account.pw_dir, "CASA_HOME": str(facility_home),
           "COLUMNS": "200", "NO_COLOR": "1"}  # fmt: skip
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"

    def as_user(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([runuser, "-u", USER, "--", str(USER_CASA), *args],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip

    for args in (["datasets", "show", "demo", "--json"], ["datasets", "export"]):
        p = as_user(*args)
        assert p.returncode == 0, (args, p.stderr)
        assert json.loads(p.stdout) == json.loads(_root_casa(facility_home, *args).stdout)
    assert "demo" in as_user("datasets", "list").stdout
    p = as_user("datasets", "add", "mine", str(gen_dir))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    (line,) = p.stderr.strip().splitlines()  # one sentence
    assert "'casa datasets add' is for the facility's admin (root" in line
    assert f"not for your account {USER}" in line
    assert database.read_bytes() == before
    listed = json.loads(_root_casa(facility_home, "datasets", "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["demo"]
