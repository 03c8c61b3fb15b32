"""Every executor gives the same histograms, and counts each entry exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from casa.analysis.registry import load_processor
from casa.analysis.runner import plan_chunks, run_analysis
from casa.compute.local import FuturesBackend, IterativeBackend, LocalDaskBackend, local_backend
from casa.data.files import inspect_root_file
from casa.errors import UsageError
from casa.generate.generator import generate_dataset

ANALYSES = ["dimuon", "adl1", "adl5", "adl6", "adl7", "adl8"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("executors")
    generate_dataset(d, 30_000, 3, seed=33, workers=1)
    return [inspect_root_file(p, "Events") for p in sorted(d.glob("*.root"))]


class _Analyses:
    """Several built-in analyses in one processor, so each executor starts only once."""

    def __init__(self):
        self.inner = {name: load_processor(name) for name in ANALYSES}

    def process(self, events):
        return {name: p.process(events) for name, p in self.inner.items()}

    def postprocess(self, accumulator):
        return accumulator


def _values(output):
    return {(a, h): output[a][h].values(flow=True) for a in output for h in output[a]}


@pytest.fixture(scope="module")
def results(files):
    from coffea.processor import ProcessorABC

    ProcessorABC.register(_Analyses)
    out = {}
    for backend in (IterativeBackend(), FuturesBackend(), LocalDaskBackend()):
        progress = []
        result = run_analysis(
            _Analyses(), "gen", files, backend, workers=2, chunksize=4_000,
            on_progress=lambda c, e, progress=progress: progress.append((c, e)),
        )  # fmt: skip
        out[backend.name] = (result, progress)
    return out


def test_identical_histograms(results):
    reference = _values(results["iterative"][0].output)
    assert reference, "no histograms"
    assert sum(v.sum() for v in reference.values()) > 0
    for name in ("futures", "dask"):
        other = _values(results[name][0].output)
        assert other.keys() == reference.keys()
        for key in reference:
            assert np.array_equal(other[key], reference[key]), (name, key)


def test_every_entry_counted_once(results, files):
    expected = {f.url: f.events for f in files}
    for name, (result, progress) in results.items():
        assert result.events_per_file == expected, name
        assert result.chunks_repeated == [], name
        assert result.chunks == len(plan_chunks("gen", files, 4_000))
        assert result.workers == (1 if name == "iterative" else 2)
        assert progress[-1] == (result.chunks, 30_000), name
        assert result.bytes_read > 0


def test_plan_chunks_covers_every_entry_once(files):
    chunks = plan_chunks("gen", files, 3_000)
    for f in files:
        mine = sorted((c.entrystart, c.entrystop) for c in chunks if c.filename == f.url)
        assert mine[0][0] == 0 and mine[-1][1] == f.events
        assert all(a[1] == b[0] for a, b in zip(mine, mine[1:], strict=False))
        sizes = [stop - start for start, stop in mine]
        assert max(sizes) - min(sizes) < len(sizes)
        assert len(mine) == max(1, round(f.events / 3_000))


def test_unknown_executor():
    with pytest.raises(UsageError, match="unknown executor 'spark'"):
        local_backend("spark")
