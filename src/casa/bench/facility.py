"""A private facility for one bench: its own state directory, free ports, stopped at the end.

The state directory is a fresh folder under ``/tmp`` of mode 0711, so that XRootD, which
runs as the ``xrootd`` account when casa runs as root, can reach it; it is deleted with
everything in it (storage copies and the cache's disk included) when the bench ends.
Clusters run as the facility's own account (``[gateway] backend = "local"``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from casa.bench.dataset import BenchDataset
from casa.bench.wan import WanCacheService, WanLink, WanOriginService
from casa.config import SERVICE_PORTS
from casa.data.files import FileInfo
from casa.errors import ServiceError
from casa.facility import Facility, facility_context
from casa.services.facility import facility_services
from casa.services.supervisor import Supervisor
from casa.services.xrootd.service import CacheService, OriginService

#: The catalog name of the bench's dataset in its private facility.
DATASET = "bench"
#: Ports the default facility uses: a bench never takes them.
DEFAULT_PORTS = range(21000, 21097)


def _ephemeral_range() -> range:
    """The ports the kernel hands out for outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_ports(n: int, share: tuple[int, int] = (0, 1)) -> list[int]:
    """``n`` distinct TCP ports free right now, outside the ephemeral range and the defaults;
    with ``share = (k, m)``, only ports p with p % m == k (process k of m choosing at once
    never picks another's).

    The cache is restarted during a bench: a port from the ephemeral range could meanwhile
    become the local end of some outgoing connection, and the restart would find it taken.
    """
    ephemeral = _ephemeral_range()
    k, m = share
    candidates = [p for p in range(10000, 65536) if p % m == k
                  and p not in ephemeral and p not in DEFAULT_PORTS]  # fmt: skip
    random.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise ServiceError(f"found only {len(ports)} free TCP ports of {n} for the bench's facility")


def new_home() -> Path:
    """A fresh state directory under /tmp that other accounts may traverse (mode 0711)."""
    home = Path(tempfile.mkdtemp(prefix="casa-bench-", dir="/tmp"))
    os.chmod(home, 0o711)
    sections: dict[str, str] = {"gateway": 'backend = "local"\n'}
    for (section, key), port in zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True):
        sections[section] = sections.get(section, "") + f"{key} = {port}\n"
    (home / "casa.toml").write_text("".join(f"[{n}]\n{body}" for n, body in sections.items()))
    return home


class BenchFacility:
    """The bench's facility: started, given the dataset and a token, cold-cached on demand."""

    def __init__(self, home: Path, link: WanLink | None = None):
        self.home = home
        self.link = link
        self.ctx: Facility = facility_context(home)
        services = facility_services()
        if link is not None:
            services = [
                WanOriginService(link)
                if isinstance(s, OriginService)
                else WanCacheService(link)
                if isinstance(s, CacheService)
                else s
                for s in services
            ]
        self.supervisor = Supervisor(self.ctx, services)
        self.cache = next(s for s in services if s.name == "cache")

    def up(self) -> tuple[float, dict[str, str]]:
        """Start every service (as ``casa up`` does); seconds until all are healthy."""
        started = time.perf_counter()
        report = self.supervisor.up()
        return time.perf_counter() - started, report

    def store(self, dataset: BenchDataset, name: str = DATASET) -> tuple[list[FileInfo], float]:
        """Copy the files into facility storage and catalogue their ``root://`` URLs as
        dataset ``name``."""
        started = time.perf_counter()
        storage = self.ctx.storage()
        catalog = self.ctx.catalog()
        try:
            copied = storage.store(name, list(dataset.files))
            stored = catalog.add_files(name, copied, metadata={"area": storage.area(name, None)})
        finally:
            catalog.close()
        return list(stored.files), time.perf_counter() - started

    def token(self) -> str:
        """A data token for the calling account, from the facility's issuer."""

        return self.ctx.request_token()

    def cold_cache(self) -> float:
        """Stop the cache, empty its disk, start it again; seconds until it is healthy.

        Stopping the process empties XCache's memory too, so the next read of any block
        must come from the origin.
        """
        started = time.perf_counter()
        only_cache = Supervisor(self.ctx, [self.cache])
        only_cache.down()
        disk = self.ctx.paths.cache_disk
        if disk.is_dir():
            for entry in disk.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        only_cache.up()
        return time.perf_counter() - started

    def cache_bytes(self) -> int:
        """Bytes the cache holds on its disk (allocated blocks, so sparse files count right)."""
        disk = self.ctx.paths.cache_disk
        total = 0
        for root, _dirs, names in os.walk(disk):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    def down(self) -> None:
        """Stop every service."""
        self.supervisor.down()


@contextlib.contextmanager
def bearer_token(token: str) -> Iterator[None]:
    """``$BEARER_TOKEN`` set to ``token`` inside the block, restored afterwards."""
    old = os.environ.get("BEARER_TOKEN")
    os.environ["BEARER_TOKEN"] = token
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BEARER_TOKEN", None)
        else:
            os.environ["BEARER_TOKEN"] = old


@contextlib.contextmanager
def bench_facility(link: WanLink | None = None, keep: bool = False) -> Iterator[BenchFacility]:
    """A private facility in a fresh state directory; stopped (and deleted) on exit."""
    home = new_home()
    facility = BenchFacility(home, link)
    try:
        yield facility
    finally:
        try:
            facility.down()
        finally:
            if not keep:
                shutil.rmtree(home, ignore_errors=True)
