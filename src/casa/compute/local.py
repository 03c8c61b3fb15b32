"""Work on this machine: coffea's iterative, futures (process pool) and Dask executors."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue as queue_module
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from casa.compute.base import ComputeBackend, OpenBackend, ProgressChannel
from casa.data.codecs import use_fastest_zlib
from casa.errors import UsageError
from casa.worker.plugins import install_worker_plugin


class _QueueReporter:
    """Picklable reporter that puts event counts on a multiprocessing manager queue."""

    def __init__(self, q):
        self.q = q

    def __call__(self, events: int) -> None:
        self.q.put(events)


class ManagerQueueChannel(ProgressChannel):
    """Progress through a multiprocessing manager queue (same-machine processes)."""

    def __init__(self, q):
        self._q = q

    def reporter(self) -> Callable[[int], None]:
        """Reporter bound to the manager queue."""
        return _QueueReporter(self._q)

    def drain(self) -> list[int]:
        """Everything queued so far."""
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue_module.Empty:
                return out


class _DaskQueueReporter:
    """Picklable reporter that puts event counts on a named ``distributed.Queue``."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, events: int) -> None:
        from distributed import Queue

        Queue(self.name).put(events)


class DaskQueueChannel(ProgressChannel):
    """Progress through a ``distributed.Queue`` held by the cluster's scheduler."""

    def __init__(self, client, name: str):
        from distributed import Queue

        self._name = name
        self._queue = Queue(name, client=client)

    def reporter(self) -> Callable[[int], None]:
        """Reporter naming the scheduler-side queue."""
        return _DaskQueueReporter(self._name)

    def drain(self) -> list[int]:
        """Everything queued so far."""
        n = self._queue.qsize()
        return list(self._queue.get(batch=n)) if n else []


def on_dask_client(
    client, name: str, dashboard: str | None, workers: int | None = None
) -> OpenBackend:
    """coffea's DaskExecutor and a progress channel on a connected ``distributed.Client``.

    Shared by every Dask-based backend (local cluster, Dask Gateway, batch systems);
    ``workers`` defaults to the workers connected now. The workers get casa's column
    cache and tree cache plugins (kept across runs on a long-lived cluster; whether a run
    uses them is the runner's choice), glibc's allocation thresholds back
    (:mod:`casa.worker.allocator`) and the fastest ZLIB library
    (:mod:`casa.worker.decompression`).
    """
    import uuid

    from coffea import processor

    channel = DaskQueueChannel(client, f"casa-progress-{uuid.uuid4().hex}")
    executor = processor.DaskExecutor(client=client, status=False, retries=3)
    caches = _worker_plugins(client)
    if workers is None:
        workers = len(client.scheduler_info()["workers"])
    return OpenBackend(executor, channel, name, workers, dashboard, **caches)


#: The worker plugins each connected client has registered, and whether the caches took.
_REGISTERED: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


def _worker_plugins(client) -> dict[str, bool]:
    """Register casa's worker plugins once per client (the scheduler keeps them, also for
    workers that join later): a kept connection's later runs skip four round trips."""
    registered = _REGISTERED.get(client)
    if registered is None:
        from casa.worker.allocator import register_allocator_thresholds
        from casa.worker.column_cache import register_column_cache
        from casa.worker.decompression import FastestZlib
        from casa.worker.tree_cache import register_tree_cache

        register_allocator_thresholds(client)
        install_worker_plugin(client, FastestZlib())
        registered = _REGISTERED[client] = {
            "column_cache": register_column_cache(client),
            "tree_cache": register_tree_cache(client),
        }
    return registered


@contextlib.contextmanager
def on_job_cluster(
    cluster, name: str, workers: int, wait_seconds: float, where_to_look: str
) -> Iterator[OpenBackend]:
    """Scale a dask-jobqueue cluster to ``workers`` jobs, wait for them, yield a DaskExecutor.

    Shared by the batch-system backends (Slurm, HTCondor); ``where_to_look`` ends the
    error when the jobs do not start in time.
    """
    from distributed import Client

    from casa.errors import ServiceError

    with cluster, Client(cluster) as client:
        cluster.scale(workers)
        try:
            client.wait_for_workers(workers, timeout=wait_seconds)
        except TimeoutError:
            raise ServiceError(
                f"{name} did not start {workers} worker(s) within {wait_seconds:.0f} s: "
                f"{where_to_look}"
            ) from None
        yield on_dask_client(client, name.lower(), cluster.dashboard_link)


class IterativeBackend(ComputeBackend):
    """One chunk after another in this process."""

    name = "iterative"

    @contextlib.contextmanager
    def open(self, workers: int) -> Iterator[OpenBackend]:
        """Yield coffea's IterativeExecutor (``workers`` is ignored: there is one)."""
        from coffea import processor

        use_fastest_zlib()
        with _manager_channel() as channel:
            yield OpenBackend(processor.IterativeExecutor(status=False), channel, self.name, 1)


class FuturesBackend(ComputeBackend):
    """A pool of worker processes on this machine."""

    name = "futures"

    @contextlib.contextmanager
    def open(self, workers: int) -> Iterator[OpenBackend]:
        """Yield coffea's FuturesExecutor over a process pool of ``workers``."""
        from concurrent.futures import ProcessPoolExecutor

        from coffea import processor

        with (
            _manager_channel() as channel,
            ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=use_fastest_zlib,
            ) as pool,
        ):
            executor = processor.FuturesExecutor(pool=pool, workers=workers, status=False)
            yield OpenBackend(executor, channel, self.name, workers)


class LocalDaskBackend(ComputeBackend):
    """A Dask cluster of ``workers`` single-threaded worker processes on this machine."""

    name = "dask"

    @contextlib.contextmanager
    def open(self, workers: int) -> Iterator[OpenBackend]:
        """Yield coffea's DaskExecutor on a fresh ``distributed.LocalCluster``."""
        from distributed import Client, LocalCluster

        from casa.worker.dashboard_guard import GUARD_MODULE, guard_this_process

        guard_this_process()  # the dashboard answers the link casa prints only
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                host="127.0.0.1",
                preload=[GUARD_MODULE],
                # A failing chunk is reported once by casa, with the user's traceback; the
                # workers' own error logs would print it again, less readably.
                silence_logs=logging.CRITICAL,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield on_dask_client(client, self.name, cluster.dashboard_link, workers)


@contextlib.contextmanager
def _manager_channel() -> Iterator[ManagerQueueChannel]:
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield ManagerQueueChannel(manager.Queue())


LOCAL_BACKENDS: dict[str, type[ComputeBackend]] = {
    "iterative": IterativeBackend,
    "futures": FuturesBackend,
    "dask": LocalDaskBackend,
}


def local_backend(name: str) -> ComputeBackend:
    """The local backend called ``name``; UsageError naming the choices otherwise."""
    try:
        return LOCAL_BACKENDS[name]()
    except KeyError:
        raise UsageError(
            f"unknown executor {name!r}: choose one of {', '.join(LOCAL_BACKENDS)}"
        ) from None
