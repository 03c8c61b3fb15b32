"""A column cache on Dask workers, so that repeated queries do not decompress baskets again.

coffea's ``Runner(cachestrategy="dask-worker")`` looks for a worker plugin named
``columncache`` and hands it to ``NanoEventsFactory`` as its ``buffer_cache``: every
column a processor reads is then kept on the worker, keyed by the file's UUID, tree,
entry range and column. ``DaskExecutor(worker_affinity=True)`` sends each chunk to the
same worker every time, so a second query over the same chunks finds its columns there.

coffea's own :class:`~coffea.processor.dask.ColumnCache` spills to blosc2-compressed
memory and to the worker's disk; casa's keeps decompressed columns in memory only, as an
LRU bounded in bytes (a fraction of the worker's memory limit), and needs no blosc2.
"""

from __future__ import annotations

import warnings
from threading import Lock
from typing import Any

from coffea.processor.dask import ColumnCache

#: Share of a worker's memory limit the cache may hold, unless a size is given.
DEFAULT_FRACTION = 0.25
#: The cache's size on workers without a memory limit.
UNLIMITED_WORKER_BYTES = 1 << 30


class WorkerColumnCache(ColumnCache):
    """coffea's ``columncache`` worker plugin, held in worker memory as a byte-bounded LRU."""

    #: Registering it again (every run on a long-lived cluster does) keeps the columns.
    idempotent = True

    def __init__(self, fraction: float = DEFAULT_FRACTION, max_bytes: int | None = None):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        super().__init__(maxmem=max_bytes or 0, maxcompressed=0, maxdisk=0)
        self.fraction = fraction
        self.max_bytes = max_bytes

    def setup(self, worker: Any) -> None:
        """Size the LRU from the worker's memory limit and start counting hits and misses."""
        from zict import LRU

        limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        if self.max_bytes:
            self.capacity = int(self.max_bytes)
        elif limit:
            self.capacity = int(self.fraction * limit)
        else:
            self.capacity = UNLIMITED_WORKER_BYTES
        self.cache = LRU(self.capacity, {}, weight=lambda key, value: value.nbytes)
        self.lock = Lock()
        self.hits = 0
        self.misses = 0

    def stats(self) -> dict[str, int]:
        """Hits, misses, columns held, their bytes and the capacity."""
        with self.lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "columns": len(self.cache),
                "bytes": int(self.cache.total_weight),
                "capacity": self.capacity,
            }

    def clear(self) -> None:
        """Forget every column and reset the counters."""
        with self.lock:
            self.cache.clear()
            self.hits = 0
            self.misses = 0


def register_column_cache(client: Any, fraction: float = DEFAULT_FRACTION) -> bool:
    """Install the plugin on the cluster's workers (and on workers that join later).

    Idempotent: a worker that holds the plugin already keeps it and its columns, so every
    run on a long-lived cluster (a gateway cluster, say) shares one cache per worker.
    Returns False, with a warning, when the workers cannot load it (an older casa in the
    workers' environment): runs then go on without the cache.
    """
    try:
        client.register_plugin(WorkerColumnCache(fraction))
    except Exception as e:  # raised on the workers; the run does not need the cache
        warnings.warn(
            f"the workers could not load casa's column cache ({type(e).__name__}: {e}); "
            "running without it: install the same casa in the workers' environment",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def _worker_stats(dask_worker: Any) -> dict[str, int] | None:
    plugin = dask_worker.plugins.get(ColumnCache.name)
    return plugin.stats() if isinstance(plugin, WorkerColumnCache) else None


def _worker_clear(dask_worker: Any) -> bool:
    plugin = dask_worker.plugins.get(ColumnCache.name)
    if isinstance(plugin, WorkerColumnCache):
        plugin.clear()
        return True
    return False


def column_cache_stats(client: Any) -> dict[str, dict[str, int] | None]:
    """Each worker's cache figures by address (None on a worker without the plugin)."""
    return client.run(_worker_stats)


def clear_column_cache(client: Any) -> None:
    """Empty the cache on every worker."""
    client.run(_worker_clear)
