"""Why a run failed, in words: the file, the entry range, the cause, the user's own traceback.

coffea wraps a failing chunk as ``Exception(f"... The error was: {e!r}.")``; Dask sends
back only that message, and cloudpickle names the frames of a user's file
``<dynamic-code>``. This module turns what arrives into a casa error a user can act on.
"""

from __future__ import annotations

import linecache
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from casa.data.sources import refused_path, scrub
from casa.errors import AnalysisError, DataError

TB_START, TB_END = "\n<<casa-traceback>>\n", "\n<</casa-traceback>>"


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


_ITEM = re.compile(
    r"WorkItem\(dataset='(?P<dataset>[^']*)', filename='(?P<file>[^']*)', "
    r"treename='[^']*', entrystart=(?P<start>\d+), entrystop=(?P<stop>\d+)"
)


def analysis_error(
    error: BaseException, explain_refusal: Callable[[str], str] | None = None
) -> AnalysisError | DataError:
    """Turn coffea's wrapped failure into a casa error naming the file, entries and cause."""
    chain = []
    e: BaseException | None = error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    texts = [scrub(str(x)) for x in chain]
    where = ""
    for text in texts:
        m = _ITEM.search(text)
        if m:
            where = f" in {m['file']} entries {m['start']}-{m['stop']}"
            break
    for text in texts:
        if TB_START in text:
            head, _, rest = text.partition(TB_START)
            summary = head.rpartition("The error was: ")[2]
            details = rest.partition(TB_END)[0]
            return AnalysisError(f"the processor raised {summary}{where}", details=details)
    root = chain[-1]
    details = scrub("".join(traceback.format_exception(root)).rstrip())
    cause = scrub(str(root)).rpartition("The error was: ")[2].rstrip(".") or repr(root)
    if any("[3010]" in t or "permission denied" in t.lower() for t in texts):
        path = next((p for p in map(refused_path, texts) if p), None)
        if path and explain_refusal is not None:
            reason = explain_refusal(path)
        else:
            reason = next(t for t in texts if "[3010]" in t or "permission denied" in t.lower())
        return DataError(f"reading{where} was refused: {reason}")
    if any("Failed to open file" in t or "no bearer token found" in t for t in texts):
        return DataError(f"could not open a file{where}: {cause}", details=details)
    return AnalysisError(f"the run failed{where}: {cause}", details=details)


_DYNAMIC_FRAME = re.compile(r'File "<dynamic-code>", line (\d+), in (\S+)')


def restore_user_frames(details: str | None, processor: Any) -> str | None:
    """Put the user's file name and source lines back into a traceback from a worker.

    cloudpickle ships code from a user's file by value and names its frames
    ``<dynamic-code>``; the line numbers are still right, so the file can be named again.
    """
    module = sys.modules.get(type(processor).__module__)
    path = getattr(module, "__file__", None)
    if not details or not path:
        return details
    out = []
    for line in details.splitlines():
        m = _DYNAMIC_FRAME.search(line)
        if m:
            out.append(line.replace('"<dynamic-code>"', f'"{path}"'))
            source = linecache.getline(path, int(m[1])).strip()
            if source:
                out.append(f"    {source}")
        else:
            out.append(line)
    return "\n".join(out)
