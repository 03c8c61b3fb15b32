"""Running a coffea processor over a dataset's files, chunk by chunk, with live progress.

The catalog knows every file's entries, so casa plans coffea ``WorkItem`` chunks itself
and hands them to ``coffea.processor.Runner``, which then skips its preprocessing pass
(opening every file once more only to count its entries).
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
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
from casa.compute.base import ChunkHooks, ComputeBackend, OpenBackend, chunk_key
from casa.compute.code import check_analysis_folder
from casa.data.files import FileInfo
from casa.data.sources import require_token, uproot_options_for
from casa.errors import AnalysisError, CasaError, DataError
from casa.workarounds import quiet_coffea

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


def plan_chunks(
    dataset: str,
    files: Sequence[FileInfo],
    chunksize: int,
    metadata: Mapping[str, Any] | None = None,
) -> list:
    """coffea ``WorkItem`` chunks of ``files``: a file's own ``steps``, else chunks of about
    ``chunksize`` entries.

    A file imported with coffea's ``steps`` (a preprocessed fileset) is read in exactly
    those ranges, as coffea's ``apply_to_fileset`` reads it: entries outside them are not
    read, and ``chunksize`` does not apply to it. Other files are split by coffea's own rule
    (``round(entries / chunksize)`` nearly equal chunks), so a run from the catalog is
    chunked exactly as coffea's preprocessing would chunk it.
    ``metadata`` (the dataset's fileset metadata) travels in every chunk as its
    ``usermeta``, which coffea merges into ``events.metadata``.
    Each chunk carries its file's ROOT UUID, or for files catalogued without one a
    name-based UUID of the URL: coffea's worker affinity hashes it with the entry range, and
    without it equal ranges of different files would all go to one worker.
    """
    from coffea.processor.executor import WorkItem

    from casa.data.catalog import check_metadata

    if chunksize < 1:
        raise AnalysisError(f"--chunksize must be at least 1 (got {chunksize})")
    usermeta = check_metadata(dataset, dict(metadata)) if metadata else None
    items = []
    for f in files:
        if f.events == 0:
            continue
        if f.steps is not None:
            ranges = [(start, stop) for start, stop in f.steps if stop > start]
        else:
            n = max(1, round(f.events / chunksize))
            step = math.ceil(f.events / n)
            ranges = [(a, min(a + step, f.events)) for a in range(0, f.events, step)]
        file_id = uuid.UUID(f.uuid).bytes if f.uuid else uuid.uuid5(uuid.NAMESPACE_URL, f.url).bytes
        for start, stop in ranges:
            items.append(WorkItem(dataset, f.url, f.tree, start, stop, file_id, usermeta))
    return items


class TrackedProcessor(ProcessorABC):
    """Wraps a user's processor unchanged, recording each chunk it processes.

    The output is ``{"result": <the user's output>, "chunks": {(file, start, stop): events},
    "kept_bytes": n}``. A chunk that a retry processed twice would show up as a doubled
    count, so callers can prove that every entry was counted exactly once. ``kept_bytes``
    are the bytes the chunk read through a file the worker keeps open (the tree cache),
    which coffea's metrics do not count.
    """

    def __init__(
        self, inner: Any, reporter: Callable[[int], None] | None = None,
        hooks: ChunkHooks | None = None,
    ):  # fmt: skip
        self.inner = inner
        self.reporter = reporter
        self.hooks = hooks

    def _kept_bytes(self) -> int:
        return self.hooks.kept_bytes() if self.hooks is not None else 0

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
            if self.hooks is not None:
                # A retry of this chunk on this worker opens its file's tree afresh.
                self.hooks.forget(events.metadata["filename"])
                self.hooks.kept_bytes()  # not this run's: the chunk's output is gone
            failure = chunk_failure(e, traceback.format_exc())
        if failure is not None:
            # Raised outside the handler: no chain to unpicklable library exceptions.
            raise failure
        meta = events.metadata
        n = len(events)
        if self.reporter is not None:
            self.reporter(n)
        key = (meta["filename"], int(meta["entrystart"]), int(meta["entrystop"]))
        return {"result": out, "chunks": {key: n}, "kept_bytes": self._kept_bytes()}

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


def run_analysis(
    processor: Any,
    dataset: str,
    files: Sequence[FileInfo],
    backend: ComputeBackend,
    *,
    chunksize: int = DEFAULT_CHUNKSIZE,
    metadata: Mapping[str, Any] | None = None,
    on_start: Callable[[int, int, str | None], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    uproot_options: dict | None = None,
    explain_refusal: Callable[[str], str] | None = None,
    servers: Mapping[str, str] | None = None,
    skip_bad_files: bool = False,
    column_cache: bool = True,
    tree_cache: bool = True,
    schema: type | str | None = None,
) -> RunResult:
    """Run ``processor`` over ``files`` on ``backend`` (opened here, closed after).

    Planning (chunks from the catalog's entry counts and steps, :func:`plan_chunks`),
    running (coffea's Runner on the executor the backend sets up for this run) and
    collecting (counts per file, chunks repeated or skipped, bytes read); what the
    workers are is the backend's business.

    ``metadata`` (the dataset's fileset metadata) reaches the processor in
    ``events.metadata``.
    ``on_start(chunks, events, dashboard)`` is called once the workers are ready and
    ``on_progress(chunks_done, events_done)`` whenever chunks finish.
    ``explain_refusal(path)`` says in words why the storage refused to serve ``path``;
    ``servers`` names storage servers by ``HOST:PORT`` for errors (``{"h:1094": "the cache"}``).
    With ``skip_bad_files``, chunks whose data cannot be read are left out and listed in
    ``RunResult.skipped`` instead of ending the run.
    ``column_cache`` and ``tree_cache`` allow the backend to keep columns and trees on its
    workers between chunks and runs (:meth:`casa.compute.base.OpenBackend.for_run`).
    ``schema`` is the NanoEvents schema the trees are read with: a class or a name
    :func:`casa.analysis.schemas.resolve_schema` knows (default NanoAODSchema).
    """
    from coffea import processor as coffea_processor

    from casa.analysis.schemas import resolve_schema

    schema_class = resolve_schema(schema)
    quiet_schema_warnings()
    if not files:
        raise DataError(f"dataset {dataset!r} holds no files")
    check_files_present(files)
    chunks = plan_chunks(dataset, files, chunksize, metadata)
    total_events = sum(len(c) for c in chunks)
    if total_events == 0:
        raise DataError(f"dataset {dataset!r} holds no events: there is nothing to analyse")

    if uproot_options is None:
        uproot_options = uproot_options_for([f.url for f in files])
        if uproot_options and backend.callers_token:
            require_token([f.url for f in files])
    if backend.ships_analysis_folder:
        check_analysis_folder(processor)  # before a cluster starts for nothing
    with backend as opened, quiet_coffea(), opened.shipping(processor):
        setup = opened.for_run(chunks, column_cache=column_cache, tree_cache=tree_cache)
        tracked = TrackedProcessor(processor, opened.channel.reporter(), setup.hooks)
        uproot_options = {**uproot_options, **setup.uproot_options}
        runner = coffea_processor.Runner(
            executor=setup.executor,
            schema=schema_class,
            cachestrategy=setup.cachestrategy,
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
            if is_connection_lost(outcome["error"]) and not opened.connected():
                raise cluster_lost(opened.name, opened.scheduler_address()) from outcome["error"]
            error = analysis_error(outcome["error"], explain_refusal, servers)
            error.details = restore_user_frames(error.details, processor)
            raise _schema_hint(error, schema_class) from outcome["error"]  # for --debug

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
    skipped = [chunk_key(c) for c in chunks if chunk_key(c) not in counted]
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
            "column_cache": setup.column_cache,
            "tree_cache": setup.tree_cache,
            "kept_bytes": out.get("kept_bytes", 0),
        },
    )


def _schema_hint(error: CasaError, schema: type) -> CasaError:
    """``error``, or when NanoAODSchema refused a tree without NanoAOD's event IDs (a flat
    ntuple, say) an error saying which schema to give instead, coffea's text below it."""
    from coffea.nanoevents import NanoAODSchema

    text = str(error)
    if not (issubclass(schema, NanoAODSchema) and "missing event ID fields" in text):
        return error
    where = text.partition(": ")[0]
    return type(error)(
        f"{where}: the tree lacks NanoAOD's event IDs (run, luminosityBlock, event), which "
        f"{schema.__name__} requires: give --schema BaseSchema for a flat tree, or the schema "
        "it was written for",
        details="\n".join(x for x in (text, error.details) if x),
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
    opened: OpenBackend,
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
            if poller.error is None and opened.connected():
                lost_since = None
            else:
                lost_since = lost_since or time.monotonic()
            silent = time.monotonic() - poller.answered
            if (lost_since and time.monotonic() - lost_since > CLUSTER_LOST_SECONDS) or (
                opened.scheduler_address() is not None and silent > SCHEDULER_SILENT_SECONDS
            ):
                raise cluster_lost(opened.name, opened.scheduler_address())
            reports = poller.take()
            if reports and on_progress is not None:
                done_chunks += len(reports)
                done_events += sum(reports)
                on_progress(min(done_chunks, chunks), min(done_events, events))
    finally:
        poller.stop()
