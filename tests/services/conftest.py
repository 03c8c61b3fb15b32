"""Real facilities (issuer, XRootD origin and cache) on free ports, for the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from casa.config import SERVICE_PORTS
from casa.facility import facility_context
from casa.services.facility import facility_supervisor
from casa.services.processes import recorded_session_leaders


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now, outside the kernel's range for outgoing
    connections (a service started later would find such a port taken by some client's
    connection), and each test process's own, so that two processes never pick the same
    port between choosing and binding it."""
    from casa.bench.facility import free_ports as bench_free_ports

    me = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return bench_free_ports(n, share=(me, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@dataclass
class Facility:
    home: Path
    ports: dict[str, int]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CASA_HOME": str(self.home), "COLUMNS": "200", "NO_COLOR": "1"}

    def ctx(self):
        return facility_context(self.home)

    def supervisor(self):
        return facility_supervisor(self.ctx())

    def casa(self, *args, env: dict | None = None, check: bool = False, input_text=None):
        p = subprocess.run(
            [sys.executable, "-m", "casa", *map(str, args)], input=input_text,
            capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=300,
        )  # fmt: skip
        if check:
            assert p.returncode == 0, f"casa {args} failed:\n{p.stdout}\n{p.stderr}"
        return p

    def token(self, *args: str) -> str:
        return self.casa("token", "issue", "--print", *args, check=True).stdout.strip()


def new_facility_home(extra_toml: str = "") -> Facility:
    """A state directory other accounts can traverse (XRootD runs as 'xrootd' under root)."""
    home = Path(tempfile.mkdtemp(prefix="casa-test-", dir="/tmp"))
    os.chmod(home, 0o711)
    # Every port of every service (casa.config.SERVICE_PORTS) on a free port of its own.
    ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    sections: dict[str, str] = {}
    for (section, key), port in ports.items():
        sections[section] = sections.get(section, "") + f"{key} = {port}\n"
    rest = []
    for block in extra_toml.split("["):
        name, _, body = block.partition("]\n")
        if name in sections:
            sections[name] += body
        elif block:
            rest.append("[" + block)
    (home / "casa.toml").write_text(
        "".join(f"[{name}]\n{body}" for name, body in sections.items()) + "".join(rest)
    )
    named = {(s if k == "port" else f"{s} {k.removesuffix('_port')}"): p
             for (s, k), p in ports.items()}  # fmt: skip
    return Facility(home, named)


@pytest.fixture
def new_facility():
    """A facility started for one test (which may stop or kill its services)."""
    made = []

    def make(extra_toml: str = "") -> Facility:
        f = new_facility_home(extra_toml)
        made.append(f)
        return f

    yield make
    for f in made:
        stop_everything(f.home)


def stop_everything(home: Path) -> None:
    """Kill every process group a test facility recorded, whatever its casa.toml says: the
    services and the gateway's schedulers and workers (sessions of their own)."""
    groups = []
    for pid_file in home.glob("services/*/*.pid"):
        try:
            record = json.loads(pid_file.read_text())
            groups.append(record["pid"] if isinstance(record, dict) else int(record))
        except (ValueError, KeyError, TypeError):
            pass
    groups += recorded_session_leaders(home / "services" / "gateway" / "processes")
    for pid in groups:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def facility():
    """One running facility shared by a test module (clusters as the facility's account: the
    test users here have no Unix accounts; test_hub.py covers each user's own account)."""
    f = new_facility_home('[gateway]\nbackend = "local"\n')
    f.supervisor().up()
    yield f
    f.supervisor().down()
    stop_everything(f.home)
