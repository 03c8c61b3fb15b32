"""What every Dask-based backend shares: the executor on a connected client, its progress
channel, casa's worker plugins, and how one run uses the workers' caches.

The local Dask cluster, the caller's Dask Gateway cluster and the batch-system clusters
(HTCondor, Slurm) all end in :func:`on_dask_client`; the run's use of Dask (worker
affinity, coffea's ``dask-worker`` cache, the tree cache's uproot options) stays here, in
:meth:`DaskOpenBackend.for_run`, instead of in the runner.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from casa.compute.base import ChunkHooks, OpenBackend, ProgressChannel, RunSetup, chunk_key
from casa.worker.plugins import install_worker_plugin


@dataclass
class DaskOpenBackend(OpenBackend):
    """An open backend on a ``distributed.Client`` whose workers may hold casa's caches."""

    client: Any = None
    #: The workers hold casa's column cache plugin (:mod:`casa.worker.column_cache`).
    column_cache_ready: bool = False
    #: The workers hold casa's tree cache plugin (:mod:`casa.worker.tree_cache`).
    tree_cache_ready: bool = False

    def for_run(self, chunks: Sequence, *, column_cache: bool, tree_cache: bool) -> RunSetup:
        """With ``column_cache``, each chunk goes to the same worker every time and the
        columns it reads stay there for later runs; with ``tree_cache``, workers keep each
        file's tree between chunks instead of reading its metadata for every chunk."""
        pinned = column_cache and self.column_cache_ready
        # Unpinned, coffea's processor must reach every worker first (RunClient), or one
        # worker would run every chunk; pinned chunks go to their workers anyway.
        client = RunClient(self.executor.client, chunks, spread=not pinned)
        setup = RunSetup(dataclasses.replace(self.executor, client=client))
        if pinned:
            setup.executor = dataclasses.replace(setup.executor, worker_affinity=True)
            setup.cachestrategy = "dask-worker"
        if tree_cache and self.tree_cache_ready:
            from casa.worker.tree_cache import forget, take_thread_bytes, tree_cache_options

            setup.uproot_options = tree_cache_options()
            setup.hooks = ChunkHooks(forget=forget, kept_bytes=take_thread_bytes)
        return setup

    def shipping(self, processor: Any) -> contextlib.AbstractContextManager:
        """The folder of ``processor``'s file on the workers for the run
        (:func:`casa.compute.code.shipped_to`); sent once per version to each cluster."""
        return analysis_code_on(self.client, processor)

    def connected(self) -> bool:
        """Whether the client is still connected to its scheduler."""
        return self.client.status == "running"

    def scheduler_address(self) -> str | None:
        """Where the scheduler was reached ("?" once the client is closed)."""
        try:
            return str(self.client.scheduler.address)
        except Exception:
            return "?"


#: The progress queues a worker has reached, by name (one per run; the last few kept).
_QUEUES: collections.OrderedDict[str, Any] = collections.OrderedDict()
_KEPT_QUEUES = 4


class _DaskQueueReporter:
    """Picklable reporter that puts event counts on a named ``distributed.Queue``.

    The chunk does not wait for the scheduler: the put is sent from the worker's event
    loop, and the queue is reached once per run and worker (not per chunk). Waiting for
    both took two round trips to the scheduler per chunk, a tenth of a light query's
    chunk (docs/performance.md).
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, events: int) -> None:
        from distributed import Queue

        queue = _QUEUES.get(self.name)
        if queue is None:
            queue = _QUEUES[self.name] = Queue(self.name)
            while len(_QUEUES) > _KEPT_QUEUES:
                _QUEUES.popitem(last=False)
        queue.client.loop.add_callback(lambda: queue.put(events, asynchronous=True))


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
) -> DaskOpenBackend:
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
    return DaskOpenBackend(
        executor, channel, name, workers, dashboard, client=client,
        column_cache_ready=caches["column_cache"], tree_cache_ready=caches["tree_cache"],
    )  # fmt: skip


#: The analysis folder (its digest) each connected client's workers hold.
_SENT: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def analysis_code_on(client, processor: Any) -> contextlib.AbstractContextManager:
    """Around one run on ``client``: the folder of ``processor``'s file on its workers
    (:func:`casa.compute.code.shipped_to`), sent once per version of the folder."""
    from casa.compute.code import shipped_to

    return shipped_to(client, processor, _SENT.setdefault(client, {}))


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
) -> Iterator[DaskOpenBackend]:
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


class RunClient:
    """A ``distributed.Client`` for one run of coffea's DaskExecutor: its processor reaches
    every worker, and pinned chunks are placed evenly and loosely.

    - *Spread*: coffea sends the processor once, as a task of its own
      (``client.submit(lambda x: x, processor)``), and every chunk depends on it. The
      scheduler runs a task where its inputs are, so every chunk of a short run went to
      the one worker holding the processor: on 2 workers, 4 chunks of adl8 ran one after
      the other on one worker while the other idled (docs/performance.md). That task's
      result is copied to every worker (``Client.replicate``) before the chunks are
      mapped, so they go wherever a worker is free. (Not with ``spread=False``: chunks
      pinned to their workers go there anyway, and each worker fetches the processor
      while the others already work.)
    - *Even*: coffea's worker affinity pins each chunk to the worker a hash of it names,
      with ``allow_other_workers=False``; the hash split 8 chunks on 2 workers 4/4 only
      about a quarter of the time (6/2 as well), so one worker did most of a run. Pinned
      chunks are placed instead in plan order, round robin over the workers sorted by
      address: the same chunk goes to the same worker on every run (and every query) while
      the workers stay the same, and each worker gets its share.
    - *Loose*: a chunk pinned to a worker that dies (a host lost mid-run) would wait
      forever. With the restriction loose, the scheduler still sends each chunk to its
      worker (where its columns are cached) while that worker lives, and to another one
      when it is gone, so counts stay exact.
    """

    def __init__(self, client: Any, chunks: Sequence = (), *, spread: bool = True):
        self._client = client
        self._spread = spread
        self._order = {chunk_key(c): i for i, c in enumerate(chunks)}
        self._workers: list[str] | None = None

    def _sorted_workers(self) -> list[str]:
        """The workers by address, asked once per run (coffea maps once per worker)."""
        if self._workers is None:
            self._workers = sorted(self._client.scheduler_info(n_workers=-1)["workers"])
        return self._workers

    def submit(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``Client.submit``, its result then copied to every worker unless told not to
        (coffea submits only the processor this way)."""
        future = self._client.submit(function, *args, **kwargs)
        if self._spread:
            self._client.replicate([future])
        return future

    def map(self, function: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
        """``Client.map``; chunks pinned to workers go to their even, loose placement."""
        if not kwargs.get("workers"):
            return self._client.map(function, items, *args, **kwargs)
        kwargs["allow_other_workers"] = True
        items = list(items)
        workers = self._sorted_workers()
        placed: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            index = self._order.get(chunk_key(item))
            if index is None or not workers:  # not a planned chunk: coffea's choice
                placed.setdefault(next(iter(kwargs["workers"])), []).append(i)
            else:
                placed.setdefault(workers[index % len(workers)], []).append(i)
        futures: list[Any] = [None] * len(items)
        for worker, positions in placed.items():
            mapped = self._client.map(
                function, [items[i] for i in positions], *args, **{**kwargs, "workers": {worker}}
            )
            for i, future in zip(positions, mapped, strict=True):
                futures[i] = future
        return futures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
