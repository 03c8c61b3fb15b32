"""Real Unix accounts for the tests that play several users on one host (root only)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def needs_xrootd_and_root(why: str) -> list:
    """The marks of a module that starts a facility and Unix accounts of its own: xrootd
    (never skipped in CI, where the Makefile installs it) and root (to ``why``)."""
    return [
        pytest.mark.skipif(
            shutil.which("xrootd") is None and not os.environ.get("CI"),
            reason="xrootd is not installed (make install puts it in place with apt)",
        ),
        pytest.mark.skipif(os.geteuid() != 0, reason=f"needs root to {why}"),
    ]


def remove_unix_account(name: str) -> None:
    """Kill ``name``'s processes and delete the account with its home (if it exists).

    userdel refuses while the account still has a process, and killed ones take a moment to
    go: try again for a few seconds."""
    for _ in range(50):
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        done = subprocess.run(["userdel", "-r", name], capture_output=True)
        try:
            pwd.getpwnam(name)
        except KeyError:
            return
        if done.returncode not in (0, 8):  # 8: the account is still logged in (has processes)
            return
        time.sleep(0.1)


@contextmanager
def unix_account(name: str) -> Iterator[pwd.struct_passwd]:
    """A fresh account ``name`` with a home and no login shell, removed afterwards."""
    remove_unix_account(name)
    subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        remove_unix_account(name)
