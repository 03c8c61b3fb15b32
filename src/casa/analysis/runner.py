"""Running a coffea processor over a dataset's files, chunk by chunk, with live progress.

The catalog knows every file's entries, so casa plans coffea ``WorkItem`` chunks itself
and hands them to ``coffea.processor.Runner``, which then skips its preprocessing pass
(opening every file once more only to count its entries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffea.processor import ProcessorABC

from casa.analysis.failures import (
    UnreadableData,
    analysis_error,
    chunk_failure,
    cluster_lost,
    is_connection_lost,
    restore_user_frames,
)
from casa.compute.base import ComputeBackend
from casa.data.files import FileInfo
from casa.data.sources import require_token, uproot_options_for
from casa.errors import AnalysisError, DataError

#: Entries per chunk. Each chunk pays a fixed cost (opening the file, reading the tree's
#: metadata, building the NanoEvents form: 20-40 ms here). On 2 workers and 4M events,
#: 500,000 was faster than 200,000 (1.6x on dimuon and adl1) and than 1,000,000
#: (docs/performance.md).
DEFAULT_CHUNKSIZE = 500_000


#: What --skip-bad-files skips: chunks whose data cannot be read (a corrupt basket, a failed
#: decompression, truncated data, an unreadable file), never a storage server that stopped
#: answering (:func:`casa.analysis.failures.is_unreadable_data`).
READ_ERRORS = (UnreadableData,)
#: Warnings coffea's NanoAOD schema gives on files without NanoAOD's cross-reference indices
#: (such as the ADL benchmark layout); they say nothing about the user's analysis.
QUIET_WARNINGS = "ignore::RuntimeWarning:coffea.nanoevents.schemas.nanoaod"
#: coffea warns on every retry of a failed chunk and on every chunk it skips; casa reports
#: the failure once, at the end, and lists skipped chunks in the run's summary.
QUIET_RETRIES = "ignore:Performed attempt:UserWarning"
QUIET_SKIPS = "ignore:Skipping bad file:UserWarning"


def quiet_schema_warnings() -> None:
    """Silence the schema's cross-reference warnings here and in worker processes started later."""
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="coffea.nanoevents")
    warnings.filterwarnings("ignore", message="Performed attempt", category=UserWarning)
    warnings.filterwarnings("ignore", message="Skipping bad file", category=UserWarning)
    # Workers are new processes: they take their warning filters from the environment.
    current = [x for x in os.environ.get("PYTHONWARNINGS", "").split(",") if x]
    for rule in (QUIET_WARNINGS, QUIET_RETRIES, QUIET_SKIPS):
        if rule not in current:
            current.append(rule)
    os.environ["PYTHONWARNINGS"] = ",".join(current)


def plan_chunks(dataset: str, files: Sequence[FileInfo], chunksize: int) -> list:
    """Split each file into nearly equal chunks of about ``chunksize`` entries.

    The rule is coffea's own (``round(entries / chunksize)`` chunks per file), so a run
    from the catalog is chunked exactly as coffea's preprocessing would chunk it.
    Each chunk carries a name-based UUID of its file's URL (the catalog does not hold the
    files' own ROOT UUIDs): coffea's worker affinity hashes it with the entry range, and
    without it equal ranges of different files would all go to one worker.
    """
    from coffea.processor.executor import WorkItem

    if chunksize < 1:
        raise AnalysisError(f"--chunksize must be at least 1 (got {chunksize})")
    items = []
    for f in files:
        if f.events == 0:
            continue
        n = max(1, round(f.events / chunksize))
        step = math.ceil(f.events / n)
        file_id = uuid.uuid5(uuid.NAMESPACE_URL, f.url).bytes
        for start in range(0, f.events, step):
            stop = min(start + step, f.events)
            items.append(WorkItem(dataset, f.url, f.tree, start, stop, file_id))
    return items


def _kept_bytes() -> int:
    """What this thread read through the tree cache's kept files (0 where it is not used)."""
    import sys

    tree_cache = sys.modules.get("casa.worker.tree_cache")  # imported where trees are kept
    return tree_cache.take_thread_bytes() if tree_cache is not None else 0


class TrackedProcessor(ProcessorABC):
    """Wraps a user's processor unchanged, recording each chunk it processes.

    The output is ``{"result": <the user's output>, "chunks": {(file, start, stop): events},
    "kept_bytes": n}``. A chunk that a retry processed twice would show up as a doubled
    count, so callers can prove that every entry was counted exactly once. ``kept_bytes``
    are the bytes the chunk read through a file the worker keeps open (the tree cache),
    which coffea's metrics do not count.
    """

    def __init__(self, inner: Any, reporter: Callable[[int], None] | None = None):
        self.inner = inner
        self.reporter = reporter

    def process(self, events):
        """Run the user's processor on one chunk and note which chunk it was."""
        quiet_schema_warnings()
        failure = None
        try:
            if hasattr(self.inner, "process"):
                out = self.inner.process(events)
            else:
                out = self.inner(events)
        except Exception as e:
            from casa.worker.tree_cache import forget

            # A retry of this chunk on this worker opens its file's tree afresh.
            forget(events.metadata["filename"])
            _kept_bytes()  # not this run's: the chunk's output is gone
            failure = chunk_failure(e, traceback.format_exc())
        if failure is not None:
            # Raised outside the handler: no chain to unpicklable library exceptions.
            raise failure
        meta = events.metadata
        n = len(events)
        if self.reporter is not None:
            self.reporter(n)
        key = (meta["filename"], int(meta["entrystart"]), int(meta["entrystop"]))
        return {"result": out, "chunks": {key: n}, "kept_bytes": _kept_bytes()}

    def postprocess(self, accumulator):
        """Let the user's processor postprocess its own part of the output."""
        post = getattr(self.inner, "postprocess", None)
        if callable(post):
            result = post(accumulator["result"])
            if result is not None:
                accumulator["result"] = result
        return accumulator


@dataclass
class RunResult:
    """What a run produced and what it cost."""

    output: Any
    events_per_file: dict[str, int]
    chunks: int
    chunks_repeated: list[tuple[str, int, int]]
    skipped: list[tuple[str, int, int]]
    wall_seconds: float
    bytes_read: int
    executor: str
    workers: int
    dashboard: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def events(self) -> int:
        """Events processed in all files."""
        return sum(self.events_per_file.values())

    @property
    def events_per_second(self) -> float:
        """Throughput over the whole wall time."""
        return self.events / self.wall_seconds if self.wall_seconds > 0 else 0.0


def check_files_present(files: Sequence[FileInfo]) -> None:
    """DataError naming the first local file that is missing."""
    for f in files:
        if "://" not in f.url and not Path(f.url).is_file():
            raise DataError(
                f"{f.url} is missing: it was catalogued but is no longer there; "
                "restore it or remove the dataset with 'casa datasets remove'"
            )


class LooseAffinityClient:
    """A ``distributed.Client`` whose ``map`` places pinned chunks evenly and loosely.

    coffea's worker affinity pins each chunk to the worker a hash of it names, with
    ``allow_other_workers=False``. Two changes:

    - *Even*: the hash split 8 chunks on 2 workers 4/4 only about a quarter of the time
      (6/2 as well), so one worker did most of a run. Chunks are placed instead in plan
      order, round robin over the workers sorted by address: the same chunk goes to the
      same worker on every run (and every query) while the workers stay the same, and each
      worker gets its share.
    - *Loose*: a chunk pinned to a worker that dies (a host lost mid-run) would wait
      forever. With the restriction loose, the scheduler still sends each chunk to its
      worker (where its columns are cached) while that worker lives, and to another one
      when it is gone, so counts stay exact.
    """

    def __init__(self, client: Any, chunks: Sequence = ()):
        self._client = client
        self._order = {_chunk_key(c): i for i, c in enumerate(chunks)}
        self._workers: list[str] | None = None

    def _sorted_workers(self) -> list[str]:
        """The workers by address, asked once per run (coffea maps once per worker)."""
        if self._workers is None:
            self._workers = sorted(self._client.scheduler_info(n_workers=-1)["workers"])
        return self._workers

    def map(self, function: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
        """``Client.map``; chunks pinned to workers go to their even, loose placement."""
        if not kwargs.get("workers"):
            return self._client.map(function, items, *args, **kwargs)
        kwargs["allow_other_workers"] = True
        items = list(items)
        workers = self._sorted_workers()
        placed: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            index = self._order.get(_chunk_key(item))
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


def _chunk_key(item: Any) -> tuple:
    """A chunk's identity (coffea passes ``(item, processor)`` pairs with a heavy input)."""
    if isinstance(item, tuple) and not hasattr(item, "entrystart"):
        item = item[0]
    return (item.filename, item.entrystart, item.entrystop)


def run_analysis(
    processor: Any,
    dataset: str,
    files: Sequence[FileInfo],
    backend: ComputeBackend,
    *,
    workers: int = 1,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_start: Callable[[int, int, str | None], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    uproot_options: dict | None = None,
    explain_refusal: Callable[[str], str] | None = None,
    servers: Mapping[str, str] | None = None,
    skip_bad_files: bool = False,
    column_cache: bool = True,
    tree_cache: bool = True,
) -> RunResult:
    """Run ``processor`` over ``files`` on ``backend``; progress goes to ``on_progress``.

    ``on_start(chunks, events, dashboard)`` is called once the workers are ready and
    ``on_progress(chunks_done, events_done)`` whenever chunks finish.
    ``explain_refusal(path)`` says in words why the storage refused to serve ``path``;
    ``servers`` names storage servers by ``HOST:PORT`` for errors (``{"h:1094": "the cache"}``).
    With ``skip_bad_files``, chunks whose data cannot be read are left out and listed in
    ``RunResult.skipped`` instead of ending the run.
    With ``column_cache`` (and a backend whose workers hold casa's column cache: the Dask
    ones), each chunk goes to the same worker every time and the columns it reads stay
    there for later runs (:mod:`casa.worker.column_cache`).
    With ``tree_cache`` (same backends), workers keep each file's tree between chunks
    instead of reading its metadata for every chunk (:mod:`casa.worker.tree_cache`).
    """
    from coffea import processor as coffea_processor
    from coffea.nanoevents import NanoAODSchema

    quiet_schema_warnings()
    if not files:
        raise DataError(f"dataset {dataset!r} holds no files")
    check_files_present(files)
    chunks = plan_chunks(dataset, files, chunksize)
    total_events = sum(len(c) for c in chunks)
    if total_events == 0:
        raise DataError(f"dataset {dataset!r} holds no events: there is nothing to analyse")

    if uproot_options is None:
        uproot_options = uproot_options_for([f.url for f in files])
        if uproot_options:
            require_token([f.url for f in files])
    with backend.open(workers) as opened, _coffea_quiet():
        tracked = TrackedProcessor(processor, opened.channel.reporter())
        executor, cachestrategy = opened.executor, None
        if column_cache and opened.column_cache:
            executor = dataclasses.replace(
                executor,
                worker_affinity=True,
                client=LooseAffinityClient(executor.client, chunks),
            )
            cachestrategy = "dask-worker"
        kept = tree_cache and opened.tree_cache
        if kept:  # only Dask backends hold the plugin: distributed is imported by then
            from casa.worker.tree_cache import tree_cache_options

            uproot_options = {**uproot_options, **tree_cache_options()}
        runner = coffea_processor.Runner(
            executor=executor,
            schema=NanoAODSchema,
            cachestrategy=cachestrategy,
            chunksize=chunksize,
            savemetrics=True,
            skipbadfiles=READ_ERRORS if skip_bad_files else False,
        )
        if on_start is not None:
            on_start(len(chunks), total_events, opened.dashboard)
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["out"] = runner.run(chunks, tracked, uproot_options=uproot_options)
            except BaseException as e:  # re-raised in the caller's thread
                outcome["error"] = e

        started = time.perf_counter()
        thread = threading.Thread(target=work, name="casa-runner", daemon=True)
        thread.start()
        _watch(thread, opened, len(chunks), total_events, on_progress)
        wall = time.perf_counter() - started
        if "error" in outcome:
            if is_connection_lost(outcome["error"]) and not _connected(opened):
                raise cluster_lost(opened.name, _scheduler_address(opened)) from outcome["error"]
            error = analysis_error(outcome["error"], explain_refusal, servers)
            error.details = restore_user_frames(error.details, processor)
            raise error from outcome["error"]  # the chain is for --debug

    wrapped = outcome["out"]
    out = wrapped["out"]
    metrics = wrapped.get("metrics", {})
    counted: dict[tuple[str, int, int], int] = out.get("chunks", {})
    per_file = {f.url: 0 for f in files}
    repeated = []
    for (filename, start, stop), n in counted.items():
        per_file[filename] = per_file.get(filename, 0) + n
        if n != stop - start:
            repeated.append((filename, start, stop))
    skipped = [_chunk_key(c) for c in chunks if _chunk_key(c) not in counted]
    if skipped and not skip_bad_files:
        raise AnalysisError(f"{len(skipped)} chunk(s) produced no output, the first {skipped[0]}")
    if on_progress is not None:
        on_progress(len(chunks), total_events)
    return RunResult(
        output=out.get("result"),
        events_per_file=per_file,
        chunks=len(chunks),
        chunks_repeated=repeated,
        skipped=skipped,
        wall_seconds=wall,
        # Baskets read through the workers' kept files are not in coffea's metrics.
        bytes_read=int(metrics.get("bytesread", 0)) + out.get("kept_bytes", 0),
        executor=opened.name,
        workers=opened.workers,
        dashboard=opened.dashboard,
        extra={
            "column_cache": cachestrategy is not None,
            "tree_cache": kept,
            "kept_bytes": out.get("kept_bytes", 0),
        },
    )


#: Seconds a run goes on once its Dask client has lost the scheduler before it fails (the
#: client itself would try to reconnect for 30 s, then leave coffea waiting on lost futures),
#: and seconds the scheduler may leave a progress question unanswered.
CLUSTER_LOST_SECONDS = 5.0
SCHEDULER_SILENT_SECONDS = 10.0


class _ProgressPoller:
    """Drains a run's progress channel every 0.1 s in a daemon thread of its own.

    On Dask the channel is a queue held by the scheduler, and asking a scheduler that is
    gone blocks for the client's connect timeout (30 s); here the run's thread sees how
    long the channel has not answered instead (and the process can exit meanwhile).
    """

    def __init__(self, channel: Any):
        self._channel = channel
        self._reports: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self.answered = time.monotonic()
        self.error: BaseException | None = None
        threading.Thread(target=self._poll, name="casa-progress", daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            try:
                reports = self._channel.drain()
            except Exception as e:
                self.error = e
                return
            self.answered = time.monotonic()
            for n in reports:
                self._reports.put(n)

    def take(self) -> list[int]:
        """The reports received since the last call."""
        out = []
        while not self._reports.empty():
            out.append(self._reports.get_nowait())
        return out

    def stop(self) -> None:
        """Stop polling (a question under way is left to finish on its own)."""
        self._stop.set()


def _watch(
    thread: threading.Thread,
    opened: Any,
    chunks: int,
    events: int,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Report progress until ``thread`` ends; ServiceError once the Dask cluster is gone."""
    poller = _ProgressPoller(opened.channel)
    done_chunks = done_events = 0
    lost_since = None
    try:
        while thread.is_alive():
            thread.join(0.1)
            if poller.error is not None and not is_connection_lost(poller.error):
                raise poller.error
            if poller.error is None and _connected(opened):
                lost_since = None
            else:
                lost_since = lost_since or time.monotonic()
            silent = time.monotonic() - poller.answered
            if (lost_since and time.monotonic() - lost_since > CLUSTER_LOST_SECONDS) or (
                _dask_client(opened) is not None and silent > SCHEDULER_SILENT_SECONDS
            ):
                raise cluster_lost(opened.name, _scheduler_address(opened))
            reports = poller.take()
            if reports and on_progress is not None:
                done_chunks += len(reports)
                done_events += sum(reports)
                on_progress(min(done_chunks, chunks), min(done_events, events))
    finally:
        poller.stop()


def _dask_client(opened: Any) -> Any:
    """The ``distributed.Client`` a run's executor uses (None off Dask)."""
    return getattr(opened.executor, "client", None)


def _connected(opened: Any) -> bool:
    """Whether the run's Dask client (if any) is still connected to its scheduler."""
    client = _dask_client(opened)
    return client is None or client.status == "running"


def _scheduler_address(opened: Any) -> str:
    """Where the run's Dask scheduler was reached (for errors)."""
    client = _dask_client(opened)
    try:
        return str(client.scheduler.address)
    except Exception:  # the client may be closed by now
        return "?"


@contextlib.contextmanager
def _coffea_quiet() -> Iterator[None]:
    """Hide coffea's own progress bars and tracebacks: casa shows one bar with chunks and
    events, and a failed run's one sentence.

    (coffea's IterativeExecutor draws its bar even with ``status=False``, and its
    FuturesExecutor prints the traceback of a failed chunk to stderr before raising it:
    coffea 2026.9.)
    """
    import types

    from coffea.processor import executor as coffea_executor
    from coffea.util import coffea_console

    quiet, tracebacks = coffea_console.quiet, coffea_executor.traceback
    coffea_console.quiet = True
    coffea_executor.traceback = types.SimpleNamespace(
        **{name: getattr(traceback, name) for name in traceback.__all__ if name != "print_exc"},
        print_exc=lambda *args, **kwargs: None,
    )
    try:
        yield
    finally:
        coffea_console.quiet = quiet
        coffea_executor.traceback = tracebacks
