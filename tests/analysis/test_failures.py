"""How a chunk's failure is told apart: bad data, a storage server gone, the user's code."""

from __future__ import annotations

import pickle
import traceback

import pytest
import tblib.pickling_support
from isal import isal_zlib

from casa.analysis.failures import (
    ChunkUnreadable,
    ProcessorFailed,
    StorageLost,
    UnreadableData,
    analysis_error,
    chunk_failure,
)
from casa.errors import AnalysisError, DataError, ServiceError

ITEM = ("WorkItem(dataset='d', filename='root://127.0.0.1:1094//store/data/d/f.root', "
        "treename='Events', entrystart=0, entrystop=10, fileuuid=b'', usermeta=None, preload=None)")  # fmt: skip
DEAD = OSError("XRootD error: [FATAL] Connection error in file root://127.0.0.1:1094//x.root")


def _raised(error: BaseException) -> BaseException:
    """``error`` as a processor would meet it: raised from inside a library call."""
    try:
        try:
            raise error
        except BaseException as e:
            raise RuntimeError("while calling ak.to_numpy") from e
    except RuntimeError as wrapped:
        return wrapped


def _isal_error() -> BaseException:
    try:
        isal_zlib.decompress(b"\x78\x01 not deflate data")
    except Exception as e:
        return e
    raise AssertionError("ISA-L decompressed garbage")


def test_each_kind_of_failure_becomes_a_picklable_exception_without_chain():
    tblib.pickling_support.install()  # as distributed does: exceptions pickle with chains
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(_raised(_isal_error()))  # what broke the futures executor's pool
    cases = [(_isal_error(), ChunkUnreadable), (DEAD, StorageLost), (ValueError("bug"),
             ProcessorFailed)]  # fmt: skip
    for cause, kind in cases:
        failure = chunk_failure(_raised(cause), traceback.format_exc())
        assert type(failure) is kind and failure.__cause__ is None
        again = pickle.loads(pickle.dumps(failure))
        assert type(again) is kind and str(again) == str(failure)


def test_skip_bad_files_skips_bad_data_but_never_a_dead_server():
    assert isinstance(_isal_error(), UnreadableData)
    assert isinstance(ChunkUnreadable("IsalError: bad"), UnreadableData)
    assert isinstance(ValueError("computed checksum 1 didn't match expected checksum 2"),
                      UnreadableData)  # fmt: skip
    for not_data in (DEAD, StorageLost("gone"), ValueError("bug"), ProcessorFailed("x", "tb")):
        assert not isinstance(not_data, UnreadableData), not_data
    assert pickle.loads(pickle.dumps((UnreadableData,)))[0] is UnreadableData


def test_coffeas_text_alone_names_the_kind_and_the_chunk():
    """A process pool or Dask may hand back only coffea's wrapper text."""
    for cause, kind, says in [
        (ChunkUnreadable("IsalError: bad"), DataError, "entries 0-10 cannot be read"),
        (StorageLost("OSError: " + str(DEAD)), ServiceError, "the cache at 127.0.0.1:1094"),
        (ProcessorFailed("ValueError: bug", "Traceback"), AnalysisError, "processor raised"),
    ]:
        text = Exception(f"Failed processing file: {ITEM}. The error was: {cause!r}.")
        error = analysis_error(text, servers={"127.0.0.1:1094": "the cache"})
        assert type(error) is kind and says in str(error), str(error)
