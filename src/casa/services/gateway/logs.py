"""Clusters' logs that outlive them: kept per user, readable by that user only, bounded.

A cluster's scheduler and workers write their logs into its working directory
(``services/gateway/clusters/NAME/logs/``; with the Slurm backend, the jobs' output files in
the cluster's staging folder ``~/.dask-gateway/NAME/``), which dask-gateway removes when
the cluster stops or fails to start. Before that, :func:`keep_logs` (called by the
backends' ``do_stop_cluster``) copies the end of each log (at most :data:`MAX_LOG_BYTES`)
to ``services/gateway/logs/USER/NAME/``, the folder and its files the user's (0700, 0600).
``logs/`` and ``logs/USER/`` are root's (0711: passable, not listable), so no user can
plant a link where the gateway writes; ``logs/USER/clusters.json`` (the user's) lists the
kept clusters, latest first. Each user keeps the logs of their :data:`MAX_CLUSTERS` latest
clusters, none older than :data:`MAX_AGE_DAYS` days.

The working directory is the user's: the logs are read from it without following links,
and only regular files of the user or root, with one link each, are copied.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import time
from pathlib import Path

from casa.filesystem import write_file

#: The end of each log kept, in bytes.
MAX_LOG_BYTES = 1024 * 1024
#: Stopped clusters whose logs each user keeps.
MAX_CLUSTERS = 20
#: Logs older than this many days are removed.
MAX_AGE_DAYS = 7
#: The folder, in the gateway's service folder.
LOGS_FOLDER = "logs"
#: Each user's list of kept clusters.
INDEX = "clusters.json"


def slurm_log_name(name: str) -> str:
    """The kept name of a log dask-gateway's Slurm backend writes into a cluster's staging
    folder: ``dask-scheduler-CLUSTER.log`` is ``scheduler.log``, ``dask-worker-W.log``
    ``worker-W.log`` (the local backends' names)."""
    if name.startswith("dask-scheduler-"):
        return "scheduler.log"
    return name.removeprefix("dask-")


def _read_logs(logs: Path, owner: int) -> dict[str, bytes]:
    """The end of each ``*.log`` in the folder ``logs``, read without following links."""
    try:
        folder = os.open(logs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return {}
    contents = {}
    try:
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".log")):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if (not stat.S_ISREG(info.st_mode) or info.st_nlink != 1
                        or info.st_uid not in (0, owner)):  # fmt: skip
                    continue
                f.seek(max(0, info.st_size - MAX_LOG_BYTES))
                contents[name] = f.read(MAX_LOG_BYTES)
    finally:
        os.close(folder)
    return contents


def keep_logs(
    workdir: Path, root: Path, user: str, folder: str = "logs", rename=lambda name: name
) -> Path | None:
    """Keep the logs of ``user``'s cluster whose working directory is ``workdir`` (its logs
    in ``workdir/folder``, named by ``rename``) in ``root/USER/NAME``, theirs when they have
    an account here (else the facility's, whose account then ran the cluster); the folder
    made, or None."""
    try:
        account: pwd.struct_passwd | None = pwd.getpwnam(user)
    except KeyError:
        account = None
    try:
        owner = workdir.lstat().st_uid
    except OSError:
        return None
    contents = {rename(n): data for n, data in _read_logs(workdir / folder, owner).items()}
    if not contents or "/" in user or user in ("", ".", ".."):
        return None
    ids = None
    if account is not None and os.geteuid() == 0:
        ids = (account.pw_uid, account.pw_gid)
    for folder in (root, root / user):
        folder.mkdir(mode=0o711, exist_ok=True)
        os.chmod(folder, 0o711)
    mine = root / user
    target = mine / workdir.name
    if target.is_symlink() or target.is_file():
        target.unlink()
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    for name, data in contents.items():
        write_file(target / name, data, 0o600, ids)
    if ids is not None:
        os.chown(target, *ids)
    kept = prune(mine)
    write_file(mine / INDEX, json.dumps(kept) + "\n", 0o600, ids)
    return target


def prune(mine: Path, now: float | None = None) -> list[str]:
    """Keep the :data:`MAX_CLUSTERS` latest clusters' logs of one user, none too old; the
    names kept, latest first."""
    now = time.time() if now is None else now
    folders = sorted(
        (p for p in mine.iterdir() if p.is_dir() and not p.is_symlink()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    kept = []
    for i, folder in enumerate(folders):
        if i >= MAX_CLUSTERS or now - folder.stat().st_mtime > MAX_AGE_DAYS * 86400:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            kept.append(folder.name)
    return kept


def kept_logs(root: Path, user: str, cluster: str) -> dict[str, str] | None:
    """``{"scheduler": text, "worker-NAME": text, ...}`` of a stopped cluster, or None."""
    folder = root / user / cluster
    if not folder.is_dir():
        return None
    return {p.stem: p.read_text(errors="replace") for p in sorted(folder.glob("*.log"))}


def kept_clusters(root: Path, user: str) -> list[str]:
    """The stopped clusters whose logs ``user`` keeps, latest first."""
    try:
        return json.loads((root / user / INDEX).read_text())
    except (OSError, ValueError):
        return []
