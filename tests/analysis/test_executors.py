"""Every executor gives the same histograms, and counts each entry exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from casa.analysis.registry import load_processor
from casa.analysis.runner import plan_chunks, run_analysis
from casa.compute.base import Scaling
from casa.compute.local import FuturesBackend, IterativeBackend, LocalDaskBackend
from casa.compute.registry import backend_names, create_backend
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
    two = Scaling(workers=2)
    for backend in (
        IterativeBackend(None, two),
        FuturesBackend(None, two),
        LocalDaskBackend(None, two),
    ):
        progress = []
        result = run_analysis(
            _Analyses(), "gen", files, backend, chunksize=4_000,
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


def test_unknown_backend_names_the_choices():
    with pytest.raises(UsageError, match="unknown compute backend 'spark': choose one of dask, "):
        create_backend("spark")


def test_the_registry_holds_every_backend_casa_ships():
    """Found through the entry points casa's pyproject.toml declares (a site adds its own)."""
    assert {"iterative", "futures", "dask", "gateway", "htcondor"} <= set(backend_names())
    local = create_backend("futures", None, Scaling(), worker_memory=3.0)  # not its option
    assert isinstance(local, FuturesBackend) and local.size.workers >= 1


def test_a_backend_of_fixed_size_refuses_to_adapt():
    with pytest.raises(UsageError, match="--adapt needs workers that come and go: futures"):
        create_backend("futures", None, Scaling.parse(None, "1:4"))


def test_a_backend_that_failed_to_start_releases_what_it_started():
    """start() puts what it started on the stack; a failure part way closes it at once."""
    from casa.compute.base import ComputeBackend

    released = []

    class HalfStarted(ComputeBackend):
        name = "half"

        def start(self, stack):
            stack.callback(released.append, "pool")
            raise RuntimeError("no workers")

    backend = HalfStarted()
    with pytest.raises(RuntimeError):
        backend.open()
    assert released == ["pool"]
    backend.close()  # closing what is not open is harmless
    assert released == ["pool"]
