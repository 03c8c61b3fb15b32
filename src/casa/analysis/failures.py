"""Why a run failed, in words: the file, the entry range, the cause, the user's own traceback.

coffea wraps a failing chunk as ``Exception(f"... The error was: {e!r}.")``; Dask sends
back only that message, and cloudpickle names the frames of a user's file
``<dynamic-code>``. This module turns what arrives into a casa error a user can act on:
a data problem (a corrupt basket, a failed decompression, truncated data, an unreadable
file) is a :class:`DataError`, a storage server or cluster that stopped answering is a
:class:`ServiceError`, and only the user's own code raising is an :class:`AnalysisError`.
"""

from __future__ import annotations

import linecache
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from casa.data.sources import refused_path, scrub
from casa.errors import AnalysisError, CasaError, DataError, ServiceError

TB_START, TB_END = "\n<<casa-traceback>>\n", "\n<</casa-traceback>>"
#: Marks in coffea's wrapper text (``{e!r}``) saying which kind of failure a chunk had.
UNREADABLE_MARK, STORAGE_MARK = "<<casa-unreadable>>", "<<casa-storage-lost>>"


class ProcessorFailed(Exception):
    """The user's processor raised; carries the user's traceback as text.

    coffea wraps a failure as ``Exception(f"... The error was: {e!r}.")`` and Dask sends
    only that message back, so the traceback travels inside this exception's repr.
    """

    def __init__(self, summary: str, user_traceback: str):
        super().__init__(summary, user_traceback)
        self.summary = summary
        self.user_traceback = user_traceback

    def __str__(self) -> str:
        return self.summary

    def __repr__(self) -> str:
        return f"{self.summary}{TB_START}{self.user_traceback.rstrip()}{TB_END}"


class _ChunkFault(Exception):
    """A chunk's failure as text only, so that it pickles wherever it is raised.

    The library's own exception may not pickle (ISA-L's ``IsalError`` names a module that
    cannot be imported, and distributed's tblib pickles every exception with its chain),
    which broke the futures executor's process pool. The traceback rides along as a note,
    shown with ``--debug``.
    """

    mark = ""

    def __init__(self, cause: str, details: str = ""):
        super().__init__(cause, details)
        self.cause = cause
        if details:
            self.add_note(details.rstrip())

    def __str__(self) -> str:
        return self.cause

    def __repr__(self) -> str:
        return f"{self.mark}{self.cause}"


class ChunkUnreadable(_ChunkFault):
    """A chunk's data could not be read: corrupt, truncated or not ROOT data."""

    mark = UNREADABLE_MARK


class StorageLost(_ChunkFault):
    """The storage server a chunk was read from stopped answering (not the data's fault)."""

    mark = STORAGE_MARK


def _data_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the bytes of a file are bad (or the file could not be read)."""
    import lzma

    import cramjam
    from uproot.deserialization import DeserializationError

    from casa.data.codecs import CorruptZlibData

    return (
        OSError,
        EOFError,
        CorruptZlibData,
        lzma.LZMAError,
        cramjam.DecompressionError,
        DeserializationError,
    )


DATA_ERROR_TYPES = _data_error_types()


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it was raised from or during, once each."""
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and not any(e is s for s in seen):
        seen.append(e)
        yield e
        e = e.__cause__ or e.__context__


def is_storage_fault(error: BaseException) -> bool:
    """Whether ``error`` says an XRootD server stopped answering (rather than refusing).

    The XRootD client's status messages say ``[ERROR] Server responded with an error``
    when the server answered (no such file, permission denied); any other XRootD error
    (socket error, connection refused, operation expired) means it did not answer.
    """
    if isinstance(error, StorageLost):
        return True
    return isinstance(error, OSError) and _names_storage_fault(str(error))


def _names_storage_fault(text: str) -> bool:
    return "XRootD error" in text and "Server responded with an error" not in text


def is_unreadable_data(error: BaseException) -> bool:
    """Whether ``error`` says a chunk's data cannot be read (what --skip-bad-files skips)."""
    if isinstance(error, ChunkUnreadable):
        return True
    if isinstance(error, (StorageLost, ProcessorFailed)) or is_storage_fault(error):
        return False
    if isinstance(error, DATA_ERROR_TYPES):
        return True
    # uproot raises a plain ValueError when an LZ4 basket's checksum does not match.
    return isinstance(error, ValueError) and "checksum" in str(error)


class _UnreadableDataMeta(type):
    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, BaseException) and is_unreadable_data(instance)


class UnreadableData(metaclass=_UnreadableDataMeta):
    """Matches, in ``isinstance``, every exception :func:`is_unreadable_data` accepts.

    coffea's ``skipbadfiles`` takes a tuple of types and checks each exception of a failed
    chunk's chain with ``isinstance``: this one class gives it casa's rule (a dead storage
    server is no bad file), and pickles by reference to reach Dask workers.
    """


def chunk_failure(error: BaseException, processor_traceback: str) -> Exception:
    """What a chunk whose processor raised ``error`` raises instead: picklable, no chain."""
    chain = list(exception_chain(error))
    cause = next((e for e in chain if is_storage_fault(e)), None)
    if cause is not None:
        return StorageLost(f"{type(cause).__name__}: {scrub(str(cause))}", processor_traceback)
    cause = next((e for e in chain if is_unreadable_data(e)), None)
    if cause is not None:
        text = f"{type(cause).__name__}: {scrub(str(cause))}"
        return ChunkUnreadable(text.split("\n\nThis error occurred while")[0], processor_traceback)
    return ProcessorFailed(f"{type(error).__name__}: {error}", processor_traceback)


_ITEM = re.compile(
    r"WorkItem\(dataset='(?P<dataset>[^']*)', filename='(?P<file>[^']*)', "
    r"treename='[^']*', entrystart=(?P<start>\d+), entrystop=(?P<stop>\d+)"
)
_SERVER = re.compile(r"roots?://(?:[^@/\s]*@)?(?P<server>[^/\s?]+)")


def analysis_error(
    error: BaseException,
    explain_refusal: Callable[[str], str] | None = None,
    servers: Mapping[str, str] | None = None,
) -> CasaError:
    """Turn coffea's wrapped failure into a casa error naming the file, entries and cause.

    ``servers`` names storage servers by ``HOST:PORT`` (such as ``"the cache"``).
    """
    chain = list(exception_chain(error))
    texts = [scrub(str(x)) for x in chain] + [scrub(repr(x)) for x in chain]
    item = next((m for m in map(_ITEM.search, texts) if m), None)
    where = f" in {item['file']} entries {item['start']}-{item['stop']}" if item else ""
    if any("[3010]" in t or "permission denied" in t.lower() for t in texts):
        return _refusal(texts, where, explain_refusal)
    storage = _marked(chain, texts, StorageLost, STORAGE_MARK)
    if storage is None and any(is_storage_fault(e) for e in chain):
        storage = next(f"{type(e).__name__}: {e}" for e in chain if is_storage_fault(e))
    if storage is None:  # coffea's text alone (the chain stayed on the worker)
        storage = next((t for t in texts if _names_storage_fault(t)), None)
    if storage is not None:
        return _storage_lost(storage, texts, item, servers or {})
    opening = any("Failed to open file" in t for t in texts)
    unreadable = _marked(chain, texts, ChunkUnreadable, UNREADABLE_MARK)
    if unreadable is None and not opening and any(is_unreadable_data(e) for e in chain):
        unreadable = next(scrub(f"{type(e).__name__}: {e}") for e in chain if is_unreadable_data(e))
    if unreadable is not None and item is not None:
        return _unreadable(unreadable, item)
    for text in texts:
        if TB_START in text:
            head, _, rest = text.partition(TB_START)
            summary = head.rpartition("The error was: ")[2]
            details = rest.partition(TB_END)[0]
            return AnalysisError(f"the processor raised {summary}{where}", details=details)
    root = chain[-1]
    # coffea's own text says it best; below it a process pool puts the whole remote traceback
    wrapped = next((t for t in texts if "The error was: " in t), scrub(str(root)))
    cause = wrapped.rpartition("The error was: ")[2].rstrip(".") or repr(root)
    if unreadable is not None or opening or any("no bearer token found" in t for t in texts):
        # (uproot's FileNotFoundError goes on to explain how files may be named)
        cause = cause.partition("Files may be specified as")[0].rstrip()
        return DataError(f"could not open a file{where}: {cause}")
    details = scrub("".join(traceback.format_exception(root)).rstrip())
    return AnalysisError(f"the run failed{where}: {cause}", details=details)


def _marked(chain: list[BaseException], texts: list[str], kind: type, mark: str) -> str | None:
    """The cause of a :class:`_ChunkFault` of ``kind`` in the chain or in coffea's text."""
    for e in chain:
        if isinstance(e, kind):
            return e.cause
    for text in texts:
        if mark in text:  # coffea's "... The error was: {e!r}."
            return text.partition(mark)[2].removesuffix(".")
    return None


def _refusal(texts: list[str], where: str, explain: Callable[[str], str] | None) -> DataError:
    path = next((p for p in map(refused_path, texts) if p), None)
    if path and explain is not None:
        reason = explain(path)
    else:
        reason = next(t for t in texts if "[3010]" in t or "permission denied" in t.lower())
    return DataError(f"reading{where} was refused: {reason}")


def _unreadable(cause: str, item: re.Match) -> DataError:
    return DataError(
        f"{item['file']} entries {item['start']}-{item['stop']} cannot be read ({cause}); "
        "replace the file, or run again with --skip-bad-files to leave out the chunks that "
        "cannot be read"
    )


def _storage_lost(
    cause: str, texts: list[str], item: re.Match | None, servers: Mapping[str, str]
) -> ServiceError:
    found = next((m for m in map(_SERVER.search, [cause, *texts]) if m), None)
    server = found["server"] if found else "?"
    name = servers.get(server, "the storage server")
    where = f" while reading {item['file']} entries {item['start']}-{item['stop']}" if item else ""
    return ServiceError(
        f"{name} at {server} stopped answering{where} ({_xrootd_status(cause)}); "
        "check 'casa status' and restart it with 'casa up'"
    )


def is_connection_lost(error: BaseException) -> bool:
    """Whether ``error`` says a Dask client lost its scheduler (closed comm, no reconnect)."""
    import asyncio
    import concurrent.futures

    for e in exception_chain(error):
        if type(e).__name__ in ("CommClosedError", "FuturesCancelledError"):
            return True
        if isinstance(e, (asyncio.CancelledError, concurrent.futures.CancelledError)):
            return True
        if isinstance(e, OSError) and "Timed out trying to connect" in str(e):
            return True
    return False


def cluster_lost(backend: str, address: str) -> ServiceError:
    """The error of a run whose Dask cluster stopped answering, naming the service to check."""
    kind, _, cluster = backend.partition(":")
    found = re.search(r"://(?P<host>[^/]+)", address)
    where = found["host"] if found else address
    if kind == "gateway":
        return ServiceError(
            f"the Dask Gateway at {where} stopped answering during the run (your cluster "
            f"{cluster} is out of reach); check 'casa status' and restart it with 'casa up'"
        )
    return ServiceError(
        f"the {kind} cluster's scheduler at {where} stopped answering during the run; check "
        "that it still runs and run again"
    )


def _xrootd_status(cause: str) -> str:
    """``[FATAL] Connection error`` out of ``OSError: XRootD error: [FATAL] ... in file URL``."""
    return cause.split(" in file ")[0].rpartition("XRootD error: ")[2]


_DYNAMIC_FRAME = re.compile(r'File "<dynamic-code>", line (\d+), in (\S+)')
#: A frame in the workers' copy of the analysis folder (casa.worker.analysis_code).
_SHIPPED_FOLDER = re.compile(r'File "[^"]*/casa-analysis-[0-9a-f]{16}/[^/"]+/')


def restore_user_frames(details: str | None, processor: Any) -> str | None:
    """Put the user's file name and source lines back into a traceback from a worker.

    cloudpickle ships code from a user's file by value and names its frames
    ``<dynamic-code>``; the line numbers are still right, so the file can be named again.
    Code shipped with the analysis's folder ran from the workers' copy of it
    (``.../casa-analysis-DIGEST/FOLDER/utils/x.py``): its frames name the user's folder.
    """
    # A processor instance answers with its class's module, a callable processor with its own.
    module = sys.modules.get(getattr(processor, "__module__", None) or type(processor).__module__)
    path = getattr(module, "__file__", None)
    if not details or not path:
        return details
    folder = str(Path(path).parent)
    out = []
    for line in details.splitlines():
        m = _DYNAMIC_FRAME.search(line)
        if m:
            out.append(line.replace('"<dynamic-code>"', f'"{path}"'))
            source = linecache.getline(path, int(m[1])).strip()
            if source:
                out.append(f"    {source}")
            continue
        # Modules shipped with the folder run from the workers' copy: name the user's file.
        line = _SHIPPED_FOLDER.sub(lambda _: f'File "{folder}/', line)
        out.append(line)
    return "\n".join(out)
