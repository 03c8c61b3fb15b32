"""A run on a Dask cluster uses every worker, not the one that holds coffea's processor.

coffea's DaskExecutor sends the processor as a task of its own that every chunk depends
on, and Dask runs a task where its inputs are: without casa's RunClient every chunk of a
short run went to one worker of two while the other idled. (With more than twice as many
chunks as worker threads, Dask's scheduler queues them as "root-ish" tasks and spreads
them anyway: the runs here have 4 chunks on 2 workers, as the bench has.)
"""

from __future__ import annotations

import pytest
from distributed import get_task_stream

from casa.compute.on_dask import RunClient
from dask_runs import ClientBackend, generated_files, run_exactly, two_workers

CHUNKSIZE = 20_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return generated_files(tmp_path_factory.mktemp("spread"), 80_000, 2, seed=43)


@pytest.fixture(scope="module")
def client():
    with two_workers() as client:
        yield client


def _chunk_workers(stream) -> dict[str, int]:
    """Chunks computed per worker in a task stream (the chunks' tasks are the processor's)."""
    per_worker: dict[str, int] = {}
    for task in stream.data:
        if "TrackedProcessor" in str(task["key"]) or "Processor" in str(task["key"]):
            per_worker[task["worker"]] = per_worker.get(task["worker"], 0) + 1
    return per_worker


@pytest.mark.parametrize("column_cache", [False, True])
def test_every_worker_runs_chunks(files, client, column_cache):
    """4 chunks on 2 workers: each runs 2, run after run (warm, as the bench)."""
    backend = ClientBackend(client)
    run_exactly("adl1", files, backend, CHUNKSIZE, column_cache=column_cache)  # warm-up
    for _ in range(2):
        with get_task_stream(client=client) as stream:
            result = run_exactly("adl1", files, backend, CHUNKSIZE, column_cache=column_cache)
        per_worker = _chunk_workers(stream)
        assert result.chunks == 4
        assert sorted(per_worker.values()) == [2, 2], per_worker


def test_plain_coffea_through_run_client_uses_every_worker(files, client):
    """coffea's own Runner with DaskExecutor on a RunClient (as casa.run builds it)."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    from casa.analysis.registry import load_processor

    fileset = {"spread": [f.url for f in files]}
    runner = processor.Runner(
        executor=processor.DaskExecutor(client=RunClient(client), status=False),
        schema=NanoAODSchema,
        chunksize=CHUNKSIZE,
        metadata_cache={},
    )
    runner(fileset, load_processor("adl1"), treename="Events")  # warm-up, preprocessing
    with get_task_stream(client=client) as stream:
        runner(fileset, load_processor("adl1"), treename="Events")
    per_worker = _chunk_workers(stream)
    assert sorted(per_worker.values()) == [2, 2], per_worker
