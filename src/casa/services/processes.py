"""Processes known by PID and start time, so that a PID reused by another program is not
mistaken for one of the facility's.

A service's own process has its PID file (the supervisor's); processes a service starts in
sessions of their own (the gateway's schedulers and workers) are recorded one file each in a
folder of the service, written by the service and read by ``casa down``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def record_process(directory: Path, pid: int) -> None:
    """Remember ``pid`` (with its start time) in ``directory``."""
    ticks = start_ticks(pid)
    if ticks is None:
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / str(pid)).write_text(str(ticks))


def forget_process(directory: Path, pid: int) -> None:
    """Drop the record of ``pid``."""
    with contextlib.suppress(FileNotFoundError):
        (directory / str(pid)).unlink()


def is_recorded(directory: Path, pid: int) -> bool:
    """Whether ``pid`` is the very process recorded in ``directory`` (not a reused PID)."""
    try:
        recorded = int((directory / str(pid)).read_text())
    except (OSError, ValueError):
        return False
    return start_ticks(pid) == recorded


def recorded_session_leaders(directory: Path) -> list[int]:
    """The recorded processes still alive that lead their own session; stale records go."""
    alive = []
    for entry in sorted(directory.glob("[0-9]*")):
        pid = int(entry.name)
        try:
            recorded = int(entry.read_text())
        except (OSError, ValueError):
            recorded = None
        try:
            leads = os.getsid(pid) == pid
        except (ProcessLookupError, PermissionError):
            leads = False
        if recorded is not None and start_ticks(pid) == recorded and leads:
            alive.append(pid)
        else:
            forget_process(directory, pid)
    return alive
