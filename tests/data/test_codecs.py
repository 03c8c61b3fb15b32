"""The ZLIB library uproot decompresses with: the fastest that works, same arrays, same errors."""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import pytest
import uproot
from uproot import compression

from casa.data.codecs import CorruptZlibData, use_fastest_zlib, zlib_library
from casa.generate.generator import generate_dataset


@pytest.fixture
def stdlib_zlib_after():
    yield
    compression._DecompressZLIB.library = "zlib"


def test_isal_is_chosen_and_reads_the_same_arrays(tmp_path, stdlib_zlib_after):
    generate_dataset(tmp_path, 30_000, 1, seed=3, workers=1)
    path = tmp_path / "events_0000.root"
    branches = ["Jet_pt", "Muon_eta", "MET_pt"]
    compression._DecompressZLIB.library = "zlib"
    with uproot.open(path) as f:
        expected = f["Events"].arrays(branches, library="np")
    # isal is a casa dependency (make install puts it in place); deflate is skipped by the probe
    # (uproot 5.7 calls it with a keyword deflate no longer takes).
    assert use_fastest_zlib() == "isal"
    assert zlib_library() == "isal"
    with uproot.open(path) as f:
        got = f["Events"].arrays(branches, library="np")
    for name in branches:
        assert len(got[name]) == len(expected[name]) == 30_000
        for a, b in zip(got[name], expected[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_failing_library_is_skipped_for_the_next(monkeypatch, stdlib_zlib_after):
    monkeypatch.setattr("casa.data.codecs.FASTER_ZLIB_LIBRARIES", ("no-such-library", "isal"))
    assert use_fastest_zlib() == "isal"
    monkeypatch.setattr("casa.data.codecs.FASTER_ZLIB_LIBRARIES", ("no-such-library",))
    assert use_fastest_zlib() == "zlib"
    assert zlib_library() == "zlib"


def test_corrupt_data_errors_of_every_library_match_one_picklable_class():
    import isal.isal_zlib

    raised = []
    for decompress in (zlib.decompress, isal.isal_zlib.decompress):
        with pytest.raises(Exception) as e:
            decompress(b"\x78\x01" + b"\x00\xff" * 20)
        raised.append(e.value)
    assert [type(e).__name__ for e in raised] == ["error", "IsalError"]
    assert all(isinstance(e, CorruptZlibData) for e in raised)
    assert not isinstance(ValueError("x"), CorruptZlibData)
    # By reference: a Dask scheduler passing coffea's skipbadfiles on keeps the same class.
    assert pickle.loads(pickle.dumps((OSError, CorruptZlibData)))[1] is CorruptZlibData
