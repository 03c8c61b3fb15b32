"""The column cache on Dask workers: repeated queries read columns from it, results stay exact."""

from __future__ import annotations

import pytest

from casa.compute.local import IterativeBackend
from casa.generate.generator import generate_file
from casa.worker.column_cache import clear_column_cache, column_cache_stats
from dask_runs import (
    ClientBackend,
    assert_same,
    generated_files,
    run_exactly,
    two_workers,
    values,
)

CHUNKSIZE = 5_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return generated_files(tmp_path_factory.mktemp("column-cache"), 40_000, 2, seed=41)


@pytest.fixture(scope="module")
def backend():
    """Two workers, work stealing off: chunks are pinned loosely to their worker (so that a
    lost worker's chunks run elsewhere), and stealing may move a pinned chunk to an idle
    worker; without it every chunk goes back to its own worker, as these tests assert."""
    with two_workers(**{"distributed.scheduler.work-stealing": False}) as client:
        yield ClientBackend(client)


def _run(query, files, backend, **kwargs):
    return run_exactly(query, files, backend, CHUNKSIZE, **kwargs)


def _totals(client):
    stats = column_cache_stats(client)
    assert all(s is not None for s in stats.values()), stats
    return {k: sum(s[k] for s in stats.values()) for k in ("hits", "misses", "columns", "bytes")}


def test_repeated_query_reads_columns_from_the_cache(files, backend):
    client = backend.client
    clear_column_cache(client)
    reference = values(_run("dimuon", files, IterativeBackend()).output)

    first = _run("dimuon", files, backend)
    after_first = _totals(client)
    assert first.extra["column_cache"] is True
    assert after_first["misses"] > 0 and after_first["columns"] > 0 and after_first["bytes"] > 0
    assert_same(values(first.output), reference)
    # 8 chunks, 4 on each worker: every chunk reads the same columns, so each worker holds
    # the same number of them (coffea's hash alone often put 5 or 6 on one worker).
    assert first.chunks == 8
    per_worker = [s["columns"] for s in column_cache_stats(client).values()]
    assert len(per_worker) == 2 and per_worker[0] == per_worker[1] > 0, per_worker

    second = _run("dimuon", files, backend)
    after_second = _totals(client)
    # Every chunk went back to the worker that holds its columns: nothing read again.
    assert after_second["misses"] == after_first["misses"]
    # The same reads as the first run, each one now a hit.
    assert after_second["hits"] - after_first["hits"] == after_first["hits"] + after_first["misses"]
    assert after_second["columns"] == after_first["columns"]
    assert_same(values(second.output), reference)


def test_queries_sharing_columns_stay_exact(files, backend):
    client = backend.client
    clear_column_cache(client)
    _run("dimuon", files, backend)  # fills the muon columns
    before = _totals(client)
    # adl5 reads the muons dimuon read, plus MET: some columns come from the cache, some not.
    adl5 = _run("adl5", files, backend)
    after = _totals(client)
    assert after["hits"] > before["hits"]
    assert after["misses"] > before["misses"]
    assert_same(values(adl5.output), values(_run("adl5", files, IterativeBackend()).output))
    # adl2 (jets) shares nothing with the muon queries and must not see their columns.
    adl2 = _run("adl2", files, backend)
    assert_same(values(adl2.output), values(_run("adl2", files, IterativeBackend()).output))


def _where_it_ran(item):
    from distributed import get_worker

    return get_worker().address


def test_pinned_chunks_are_spread_evenly_and_stay_put(files, backend):
    """However coffea's hash pins them, chunks go round robin to the workers, every run alike."""
    from casa.analysis.runner import plan_chunks
    from casa.compute.on_dask import RunClient

    client = backend.client
    chunks = plan_chunks("cc", files, CHUNKSIZE)
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    placements = []
    for _ in range(2):
        loose = RunClient(client, chunks)
        # As coffea would call it if its hash had pinned every chunk to the first worker.
        futures = loose.map(_where_it_ran, chunks, workers={workers[0]}, pure=False)
        placements.append(client.gather(futures))
    assert placements[0] == placements[1]
    assert placements[0] == [workers[i % 2] for i in range(len(chunks))]


def test_switched_off(files, backend):
    client = backend.client
    clear_column_cache(client)
    result = _run("adl1", files, backend, column_cache=False)
    assert result.extra["column_cache"] is False
    assert _totals(client) == {"hits": 0, "misses": 0, "columns": 0, "bytes": 0}
    assert_same(values(result.output), values(_run("adl1", files, IterativeBackend()).output))


def test_generated_files_name_their_content(tmp_path):
    """The cache keys on the file's UUID: different content must mean a different UUID."""
    import uproot

    uuids = set()
    for name, events in (("a.root", 1000), ("b.root", 1200)):
        generate_file(tmp_path / name, n_events=events, seed=5)
        with uproot.open(tmp_path / name) as f:
            uuids.add(f.file.uuid)
    generate_file(tmp_path / "c.root", n_events=1000, seed=5)
    with uproot.open(tmp_path / "c.root") as f:
        assert f.file.uuid in uuids  # same inputs, same bytes
    assert len(uuids) == 2
