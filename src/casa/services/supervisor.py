"""``casa up``, ``casa down`` and ``casa status``: start, stop and watch the facility services.

Each service runs as its own process group, started in the background with its output in
``services/NAME/NAME.log`` and a PID file ``services/NAME/NAME.pid`` that records the
process's start time, so a PID reused by another program after a crash is not mistaken
for the service.

``casa up`` and every service run with umask 077 (:data:`~casa.filesystem.PRIVATE_UMASK`):
whatever a service writes (logs, databases, generated configuration, the cache's files, Dask
scratch space) is its own account's alone. Only what other accounts need is opened up, each
where it is made: ``services/`` and each ``services/NAME/`` may be passed through but not
listed, and ``NAME.pid`` is readable so that any account's ``casa status`` can report the
services.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from casa.errors import ServiceError
from casa.facility import Facility
from casa.filesystem import PASSABLE_FOLDER, PRIVATE_UMASK, private_umask, write_file
from casa.services.base import Health, Service
from casa.services.processes import start_ticks

#: How long a started service may take to answer. A service that exits while starting is
#: reported at once; this bounds one that hangs. JupyterHub alone takes 20-40 s on a busy
#: two-core machine (imports, its database, the proxy), so the bound is generous.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
#: How long a port may stay busy after a restart before it counts as taken by another program.
PORT_SETTLE_SECONDS = 5.0
#: The detail of a service that has no record of ever running (or was stopped by casa down).
NOT_STARTED = "not started"


@dataclass
class ServiceStatus:
    """What ``casa status`` shows for one service."""

    name: str
    port: int
    pid: int | None
    running: bool
    healthy: bool
    uptime: float | None
    detail: str
    log: str
    #: Where users reach it, for the services they call themselves (None for the others).
    url: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


class Supervisor:
    """Runs a facility's services in order; stops them in reverse order."""

    def __init__(self, ctx: Facility, services: list[Service]):
        self.ctx = ctx
        self.services = services

    # -- files ------------------------------------------------------------------------
    def _pid_file(self, service: Service) -> Path:
        return self.ctx.service_dir(service.name) / f"{service.name}.pid"

    def log_file(self, service: Service) -> Path:
        """Where the service's output goes."""
        return self.ctx.service_dir(service.name) / f"{service.name}.log"

    def _read_pid(self, service: Service) -> dict | None:
        try:
            return json.loads(self._pid_file(service).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running_pid(self, service: Service) -> int | None:
        """The PID of the service if its recorded process is still the one alive."""
        record = self._read_pid(service)
        if not record:
            return None
        ticks = start_ticks(record["pid"])
        if ticks is None or ticks != record.get("start_ticks"):
            return None
        return record["pid"]

    # -- status -----------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        """Each service with its port, PID, health and uptime."""
        out = []
        for service in self.services:
            record = self._read_pid(service)
            pid = self.running_pid(service)
            uptime = None
            if pid is not None:
                health = service.health(self.ctx)
                ticks = record["start_ticks"]
                started = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
                uptime = max(0.0, time.time() - started)
            elif record:
                health_detail = f"not running: process {record['pid']} has exited (see the log)"
                health = _dead(health_detail)
            else:
                health = _dead(NOT_STARTED)
            out.append(
                ServiceStatus(
                    name=service.name,
                    port=service.port(self.ctx),
                    pid=pid,
                    running=pid is not None,
                    healthy=health.ok,
                    uptime=uptime,
                    detail=health.detail,
                    log=str(self.log_file(service)),
                    url=service.url(self.ctx),
                )
            )
        return out

    # -- up ---------------------------------------------------------------------------
    def up(self, timeout: float = START_TIMEOUT) -> dict[str, str]:
        """Start every service that is not running and healthy; report what was done.

        If a service fails to start, the services this call started are stopped again,
        so a failed ``casa up`` leaves the facility as it was.
        """
        with private_umask():
            return self._up(timeout)

    def _up(self, timeout: float) -> dict[str, str]:
        report: dict[str, str] = {}
        started: list[Service] = []
        try:
            for service in self.services:
                pid = self.running_pid(service)
                if pid is not None and service.health(self.ctx).ok:
                    report[service.name] = "already running"
                    continue
                restarted = pid is not None or self._read_pid(service) is not None
                if pid is not None:  # alive but unhealthy: replace it
                    self._stop(service, pid)
                self._pid_file(service).unlink(missing_ok=True)
                service.preflight(self.ctx)
                self._check_port_free(service)
                self._service_dir(service)
                service.prepare(self.ctx)
                self._start(service)
                started.append(service)
                self._wait_healthy(service, timeout)
                report[service.name] = "restarted" if restarted else "started"
        except BaseException:
            for service in reversed(started):
                pid = self.running_pid(service)
                if pid is not None:
                    self._stop(service, pid)
                self._pid_file(service).unlink(missing_ok=True)
            raise
        return report

    def _check_port_free(self, service: Service) -> None:
        for key, port in service.ports(self.ctx).items():
            self._check_one_port(service, key, port)

    def _check_one_port(self, service: Service, key: str, port: int) -> None:
        # A server stopped a moment ago (a restart) may leave its connections to clients
        # that still hold them closing for a short while, and those can refuse the bind
        # too: a port still busy after PORT_SETTLE_SECONDS belongs to another program.
        deadline = time.monotonic() + PORT_SETTLE_SECONDS
        error = _bind_error(port)
        while error is not None and error.errno == errno.EADDRINUSE:
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"port {port} for service '{service.name}' is already in use by "
                    f"another program: stop that program, or choose another port with "
                    f"'{service.name}.{key}' in casa.toml"
                )
            time.sleep(0.1)
            error = _bind_error(port)
        if error is not None:
            raise ServiceError(f"cannot use port {port} for '{service.name}': {error}")

    def _service_dir(self, service: Service) -> Path:
        """``services/NAME``, which other accounts may pass through (to the PID file, the
        issuer's socket, the users' catalog) but not list."""
        directory = self.ctx.service_dir(service.name)
        directory.mkdir(parents=True, exist_ok=True)
        for folder in (directory.parent, directory):
            os.chmod(folder, PASSABLE_FOLDER)
        self._close_old_files(service, directory)
        return directory

    def _close_old_files(self, service: Service, directory: Path) -> None:
        """Take group and other permissions from the files in ``services/NAME`` (an older
        casa wrote them world-readable); what others may read is opened again by its writer
        as the service starts (the issuer's socket, the hub's public catalog)."""
        for entry in directory.iterdir():
            info = entry.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
                if entry != self._pid_file(service):
                    os.chmod(entry, stat.S_IMODE(info.st_mode) & 0o700)

    def _start(self, service: Service) -> None:
        log = self.log_file(service)
        env = {**os.environ, **service.environment(self.ctx)}
        # The log names users, clusters and datasets: the facility's account reads it.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # also a log left by a casa that wrote logs world-readable
        with open(fd, "ab") as out:
            out.write(f"\n=== casa: starting {service.name} at {time.ctime()}\n".encode())
            out.flush()
            try:
                process = subprocess.Popen(
                    service.command(self.ctx),
                    cwd=service.working_dir(self.ctx),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    umask=PRIVATE_UMASK,
                )
            except OSError as e:
                raise ServiceError(f"could not start '{service.name}': {e}") from None
        ticks = start_ticks(process.pid)
        record = {
            "pid": process.pid,
            "start_ticks": ticks,
            "port": service.port(self.ctx),
            "command": service.command(self.ctx),
        }
        # Readable by every account, for 'casa status': a PID, a port and a command line.
        write_file(self._pid_file(service), json.dumps(record) + "\n", mode=0o644)
        # The supervisor does not wait for its children; keep Python from warning about it.
        process.returncode = 0

    def _wait_healthy(self, service: Service, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.running_pid(service) is None:
                raise ServiceError(
                    f"service '{service.name}' exited while starting; its log "
                    f"{self.log_file(service)} ends with:\n{self._log_tail(service)}"
                )
            health = service.health(self.ctx)
            if health.ok:
                return
            last = health.detail
            time.sleep(0.1)
        raise ServiceError(
            f"service '{service.name}' did not become healthy within {timeout:.0f} s ({last}); "
            f"its log {self.log_file(service)} ends with:\n{self._log_tail(service)}"
        )

    def _log_tail(self, service: Service, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(
                self.log_file(service).read_text(errors="replace").splitlines()[-lines:]
            )
        return "(no log)"

    # -- down -------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every service, in reverse order; return the names of those stopped."""
        if any(service.name == "gateway" for service in self.services):
            # This process's connections to the gateway's clusters end with it.
            from casa.compute.gateway import close_kept_connections

            close_kept_connections()
        stopped = []
        for service in reversed(self.services):
            pid = self.running_pid(service)
            if pid is not None:
                self._stop(service, pid)
                stopped.append(service.name)
            for stray in service.strays(self.ctx):  # left behind if the service was killed
                self._stop(service, stray)
                if service.name not in stopped:
                    stopped.append(service.name)
            self._pid_file(service).unlink(missing_ok=True)
        return stopped

    def _stop(self, service: Service, pid: int) -> None:
        """SIGTERM the service's process group, then SIGKILL what is left after a grace time."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if start_ticks(pid) is None and not _group_alive(pid):
                _reap(pid)
                return
            _reap(pid)
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(100):
            _reap(pid)
            if not _group_alive(pid):
                return
            time.sleep(0.05)
        raise ServiceError(f"service '{service.name}' (process group {pid}) would not stop")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left count as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status of a child we started (only matters inside one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _dead(detail: str) -> Health:
    return Health(False, detail)


def _bind_error(port: int) -> OSError | None:
    """Why a server could not listen on ``port`` now (None if it could)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers do: connections lingering in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            return e
    return None
