"""Helpers for tests that run analyses on a long-lived local Dask cluster (the worker caches)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np

from casa.analysis.registry import load_processor
from casa.analysis.runner import RunResult, run_analysis
from casa.compute.base import ComputeBackend
from casa.compute.on_dask import on_dask_client
from casa.data.files import FileInfo, inspect_root_file
from casa.generate.generator import generate_dataset


class ClientBackend(ComputeBackend):
    """A backend on one long-lived cluster, as a gateway cluster is between runs."""

    name = "test-dask"

    def __init__(self, client):
        super().__init__()
        self.client = client

    def start(self, stack):
        return on_dask_client(self.client, self.name, None)


@contextlib.contextmanager
def two_workers(**config) -> Iterator:
    """A client of a local cluster of 2 single-threaded worker processes, with ``config``."""
    import dask
    from distributed import Client, LocalCluster

    with (
        dask.config.set(config),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def generated_files(directory, events: int, files: int, seed: int) -> list[FileInfo]:
    """A generated dataset of ``files`` files in ``directory``, as the catalog describes them."""
    generate_dataset(directory, events, files, seed=seed, workers=1)
    return [inspect_root_file(p, "Events") for p in sorted(directory.glob("*.root"))]


def run_exactly(query: str, files, backend, chunksize: int, **kwargs) -> RunResult:
    """Run a built-in analysis on 2 workers; every event counted exactly once, none skipped."""
    result = run_analysis(load_processor(query), "d", files, backend, chunksize=chunksize, **kwargs)
    assert result.chunks_repeated == [] and result.skipped == []
    assert result.events == sum(f.events for f in files)
    return result


def values(output) -> dict:
    """Each histogram's counts, flow bins included."""
    return {name: h.values(flow=True) for name, h in output.items()}


def assert_same(got: dict, want: dict) -> None:
    """The same histograms, bin for bin, and not all empty."""
    assert got.keys() == want.keys() and want
    assert sum(v.sum() for v in want.values()) > 0
    for name in want:
        assert np.array_equal(got[name], want[name]), name
