"""casa's Slurm backend for dask-gateway, in the parts the multi-host test runs as root.

tests/site runs whole clusters of Slurm jobs through the gateway, as root. Here: a user
who is not root gets the job launcher under their own account (``runuser``, no sudo),
their staging folder and TLS files are theirs alone, and the commands the backend builds
carry the site's settings.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from accounts import unix_account
from casa.services.gateway.server import CasaSlurmBackend

USER = "tcslurm"
USER_ENV_PYTHON = Path("/opt/casa-user-env/bin/python")


@pytest.fixture()
def account():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a Unix account, runs the launcher as it)")
    if not USER_ENV_PYTHON.exists():
        reason = f"needs the users' environment {USER_ENV_PYTHON} (make install builds it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with unix_account(USER) as account:
        yield account


def test_launcher_runs_as_the_user_and_keeps_their_files_private(account, tmp_path):
    backend = CasaSlurmBackend(
        launcher_python=str(USER_ENV_PYTHON), slurm_conf="/etc/site/slurm.conf"
    )
    staging = Path(account.pw_dir) / ".dask-gateway" / "c1"
    code, out, err = asyncio.run(
        backend.do_as_user(
            USER,
            "start",
            cmd=["/bin/sh", "-c", 'id -un; echo "$SLURM_CONF $BEARER_TOKEN"; pwd'],
            env={"BEARER_TOKEN": "t0k3n"},
            stdin=None,
            staging_dir=str(staging),
            files={"dask.pem": "KEY", "dask.crt": "CERT"},
        )
    )
    assert code == 0, err
    assert out.split("\n")[:3] == [USER, "/etc/site/slurm.conf t0k3n", account.pw_dir]
    assert staging.stat().st_uid == account.pw_uid and staging.stat().st_mode & 0o777 == 0o700
    assert (staging / "dask.pem").read_text() == "KEY"
    assert (staging / "dask.pem").stat().st_uid == account.pw_uid
    code, _, err = asyncio.run(
        backend.do_as_user(USER, "stop", cmd=["/bin/true"], env={}, staging_dir=str(staging))
    )
    assert code == 0, err
    assert not staging.exists()


def test_commands_carry_the_site_settings():
    backend = CasaSlurmBackend(slurm_conf="/s/slurm.conf", interface="ib0")
    cmd, env = backend.get_status_cmd_env(["12", "13"])
    assert env == {"SLURM_CONF": "/s/slurm.conf"} and "--job=12,13" in cmd
    cmd, env = backend.get_stop_cmd_env("12")
    assert cmd[1:] == ["12"] and env == {"SLURM_CONF": "/s/slurm.conf"}
    args = backend._listen_args(["dask-scheduler", "--host", "0.0.0.0", "--port", "0"])
    assert args == ["dask-scheduler", "--interface", "ib0", "--port", "0"]
