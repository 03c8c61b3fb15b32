"""Give Dask workers back glibc's own memory allocation thresholds.

A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``) so that freed memory returns to the system
quickly. Setting it also turns off glibc's dynamic thresholds: every allocation above
128 KiB is then an ``mmap`` and every free an ``munmap``, and awkward arrays are made and
freed by the thousand in a chunk. Measured here on adl6 (4M events, 2 processes, warm
pools): 4.3-4.7 s without the variable, 6.3-6.8 s with it, 4.3-4.5 s with it and the
thresholds this plugin sets. The plugin sets what glibc's dynamic rule settles on for
large arrays (mmap above 32 MiB, its ceiling; trim above twice that), once per worker.
Freed memory then stays with the worker for the next chunk; when the worker's resident
memory passes half its memory limit, the plugin gives it back (``malloc_trim``) after the
task, which is what the nanny's setting is for. (Trimming after every task cost up to
a third of adl6's time again: the next chunk faults every page back in.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

from distributed import WorkerPlugin

from casa.worker.plugins import install_worker_plugin

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems: where its dynamic threshold stops.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: Share of the worker's memory limit above which freed memory goes back after a task.
TRIM_ABOVE = 0.5


def _nanny_trim_threshold() -> str | None:
    """The value Dask's nanny puts into ``MALLOC_TRIM_THRESHOLD_`` (None if it puts none)."""
    import dask

    value = dask.config.get("distributed.nanny.pre-spawn-environ", {}).get("MALLOC_TRIM_THRESHOLD_")
    return None if value is None else str(value)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
            return None
    except OSError:
        return None
    return libc


def restore_allocator_thresholds() -> bool:
    """In this process: undo the nanny's fixed trim threshold; False if nothing was done.

    Does nothing unless the variable holds exactly the nanny's value (a site that set its
    own, or ``MALLOC_MMAP_THRESHOLD_``, keeps its choice) and libc is glibc.
    """
    nanny_value = _nanny_trim_threshold()
    if nanny_value is None or os.environ.get("MALLOC_TRIM_THRESHOLD_") != nanny_value:
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class AllocatorThresholds(WorkerPlugin):
    """Worker plugin: :func:`restore_allocator_thresholds` in every worker, once."""

    name = "casa-allocator-thresholds"
    idempotent = True

    def setup(self, worker: Any) -> None:
        """Apply the thresholds; ``self.applied`` says whether they were."""
        self.applied = restore_allocator_thresholds()
        self._libc = _libc() if self.applied else None
        limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        self.trim_above = int(TRIM_ABOVE * limit) if limit else None
        self.trims = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """After a task ran, on a worker holding over half its limit: free memory goes back."""
        if self._libc is None or start != "executing":
            return
        if self.trim_above is None or _resident_bytes() > self.trim_above:
            self._libc.malloc_trim(0)
            self.trims += 1


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker_applied(dask_worker: Any) -> bool | None:
    plugin = dask_worker.plugins.get(AllocatorThresholds.name)
    return getattr(plugin, "applied", None)


def register_allocator_thresholds(client: Any) -> bool:
    """Install the plugin on the cluster's workers (and workers that join later).

    Returns False when the workers cannot load it (an older casa on the workers).
    """
    return install_worker_plugin(client, AllocatorThresholds())


def allocator_thresholds_applied(client: Any) -> dict[str, bool | None]:
    """Per worker: whether the thresholds were set (None: no plugin there)."""
    return client.run(_worker_applied)
