"""The bench's own view of its gateway cluster: start-up and scaling times, worker memory.

The probe creates the caller's cluster (the one ``GatewayBackend`` then finds and reuses),
keeps a client of its own on it for measurements, and shuts the cluster down at the end.

Peak memory per worker is each worker process's peak resident set (``VmHWM``), reset
before a run by writing ``5`` to ``/proc/self/clear_refs`` on every worker (Linux 4.0 and
later) and read after it; where that cannot be reset, the lifetime peak (``ru_maxrss``) is
reported instead and the method says so.
"""

from __future__ import annotations

import re
import time
import warnings
from typing import Any

from casa.compute.gateway import close_kept_connections, environment_option, gateway_client
from casa.errors import ServiceError
from casa.facility import Facility

#: Seconds to wait for a cluster to reach a number of workers.
WAIT_SECONDS = 180.0
#: Worker memory (GiB) of the bench's cluster, as ``casa run --cluster gateway`` asks.
WORKER_MEMORY = 2.0


def _reset_peak() -> str:
    """On a worker: reset the process's peak RSS; say which method measures the next peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _status_kib(field: str) -> int | None:
    """On a worker: ``field`` of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in KiB."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m[1]) if m else None


def _peak_kib(method: str) -> int:
    """On a worker: the process's peak RSS in KiB, by ``method``."""
    peak = _status_kib("VmHWM") if method == "VmHWM" else None
    if peak is not None:
        return peak
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _resident_kib() -> int:
    """On a worker: the process's resident set now (``VmRSS``) in KiB, 0 if unknown."""
    return _status_kib("VmRSS") or 0


def _warm_imports() -> bool:
    """On a worker: import what a chunk needs, so that the first run pays no import time."""
    import coffea.nanoevents  # noqa: F401
    import coffea.processor  # noqa: F401
    import uproot  # noqa: F401

    import casa.analysis.processors  # noqa: F401

    try:
        import XRootD.client  # noqa: F401
    except ImportError:
        pass
    return True


class ClusterProbe:
    """Creates, scales, warms and measures the caller's gateway cluster."""

    def __init__(self, ctx: Facility):
        import sys

        import cloudpickle

        # Workers may run another copy of casa (the users' environment) without this module:
        # the functions they run travel by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        self.ctx = ctx
        self.gateway: Any = None
        self.cluster: Any = None
        self.client: Any = None
        self.method = "VmHWM"

    def __enter__(self) -> ClusterProbe:
        self.gateway = gateway_client(self.ctx)
        return self

    def __exit__(self, *exc: object) -> None:
        close_kept_connections()
        try:
            if self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.shutdown()
        finally:
            self.gateway.close()

    def _workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def _wait(self, n: int) -> None:
        """Wait until the cluster has exactly ``n`` workers."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if self._workers() == n:
                return
            time.sleep(0.05)
        raise ServiceError(
            f"the bench's cluster {self.cluster.name} did not reach {n} worker(s) within "
            f"{WAIT_SECONDS:.0f} s (it has {self._workers()}); see the gateway's log"
        )

    def new_cluster(self, workers: int) -> float:
        """Create the cluster, scale it to ``workers``; seconds until they are all connected."""
        started = time.perf_counter()
        # Of this process's environment, as 'casa run --cluster gateway' from it asks: the
        # bench's whole 'casa run' commands reuse the cluster.
        self.cluster = self.gateway.new_cluster(
            worker_cores=1, worker_memory=WORKER_MEMORY, shutdown_on_close=False,
            **environment_option(self.gateway),
        )  # fmt: skip
        self.cluster.scale(workers)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Mismatched versions found")
            self.client = self.cluster.get_client(set_as_default=False)
        self._wait(workers)
        return time.perf_counter() - started

    def scale_up(self, workers: int) -> float | None:
        """Scale down to 1 worker, then time scaling to ``workers`` (None for 1 worker)."""
        if workers <= 1:
            return None
        self.cluster.scale(1)
        self._wait(1)
        started = time.perf_counter()
        self.cluster.scale(workers)
        self._wait(workers)
        return time.perf_counter() - started

    def warm_up(self) -> float:
        """Import coffea, uproot and casa's processors on every worker; seconds it took."""
        started = time.perf_counter()
        self.client.run(_warm_imports)
        return time.perf_counter() - started

    def zlib_libraries(self) -> str:
        """The ZLIB libraries the workers decompress with (after a run registered casa's
        plugins): ``isal`` where it is installed."""
        from casa.worker.decompression import worker_zlib_libraries

        return ", ".join(sorted(set(worker_zlib_libraries(self.client).values())))

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window on every worker."""
        methods = set(self.client.run(_reset_peak).values())
        self.method = "VmHWM" if methods == {"VmHWM"} else "ru_maxrss"

    def clear_column_cache(self) -> None:
        """Empty the column cache on every worker."""
        from casa.worker.column_cache import clear_column_cache

        clear_column_cache(self.client)

    def column_cache_totals(self) -> dict[str, int]:
        """Hits, misses, columns and bytes of the column cache, summed over the workers."""
        from casa.worker.column_cache import column_cache_stats

        stats = [s for s in column_cache_stats(self.client).values() if s is not None]
        return {k: sum(s[k] for s in stats) for k in ("hits", "misses", "columns", "bytes")}

    def resident_memory_mb(self) -> dict[str, float]:
        """Each worker's resident memory (MB) now: the base a run's peak grows from."""
        return {a: kib * 1024 / 1e6 for a, kib in self.client.run(_resident_kib).items()}

    def peak_memory_mb(self) -> dict[str, float]:
        """Each worker's peak resident memory (MB) since :meth:`reset_peak_memory`."""
        peaks = self.client.run(_peak_kib, self.method)
        return {address: kib * 1024 / 1e6 for address, kib in peaks.items()}
