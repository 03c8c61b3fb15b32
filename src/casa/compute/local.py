"""Work on this machine: coffea's iterative, futures (process pool) and Dask executors."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue as queue_module
from collections.abc import Callable, Iterator

from casa.compute.base import ComputeBackend, OpenBackend, ProgressChannel
from casa.compute.on_dask import DaskOpenBackend, on_dask_client
from casa.data.codecs import use_fastest_zlib


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


class IterativeBackend(ComputeBackend):
    """One chunk after another in this process (one worker, whatever the size asks)."""

    name = "iterative"

    def start(self, stack: contextlib.ExitStack) -> OpenBackend:
        """coffea's IterativeExecutor."""
        from coffea import processor

        use_fastest_zlib()
        channel = stack.enter_context(_manager_channel())
        return OpenBackend(processor.IterativeExecutor(status=False), channel, self.name, 1)


class FuturesBackend(ComputeBackend):
    """A pool of worker processes on this machine."""

    name = "futures"

    def default_workers(self) -> int:
        """One per core."""
        return os.cpu_count() or 1

    def start(self, stack: contextlib.ExitStack) -> OpenBackend:
        """coffea's FuturesExecutor over a process pool of the size's workers."""
        from concurrent.futures import ProcessPoolExecutor

        from coffea import processor

        workers = self.size.wait_for
        channel = stack.enter_context(_manager_channel())
        pool = stack.enter_context(
            ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=use_fastest_zlib,
            )
        )
        executor = processor.FuturesExecutor(pool=pool, workers=workers, status=False)
        return OpenBackend(executor, channel, self.name, workers)


class LocalDaskBackend(ComputeBackend):
    """A Dask cluster of single-threaded worker processes on this machine."""

    name = "dask"
    ships_analysis_folder = True

    def default_workers(self) -> int:
        """One per core."""
        return os.cpu_count() or 1

    def start(self, stack: contextlib.ExitStack) -> DaskOpenBackend:
        """coffea's DaskExecutor on a fresh ``distributed.LocalCluster``."""
        from distributed import Client, LocalCluster

        from casa.worker.dashboard_guard import GUARD_MODULE, guard_this_process

        guard_this_process()  # the dashboard answers the link casa prints only
        workers = self.size.wait_for
        cluster = stack.enter_context(
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
            )
        )
        client = stack.enter_context(Client(cluster))
        return on_dask_client(client, self.name, cluster.dashboard_link, workers)


@contextlib.contextmanager
def _manager_channel() -> Iterator[ManagerQueueChannel]:
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield ManagerQueueChannel(manager.Queue())
