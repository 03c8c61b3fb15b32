"""glibc's allocation thresholds come back on Dask workers (the nanny turns them off)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from casa.compute.on_dask import on_dask_client
from casa.worker.allocator import AllocatorThresholds, allocator_thresholds_applied

PROBE = "from casa.worker.allocator import restore_allocator_thresholds as r; print(r())"


def _probe(env: dict[str, str]) -> str:
    clean = {"PATH": "/usr/bin:/bin", **env}
    p = subprocess.run([sys.executable, "-c", PROBE], env=clean, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_only_the_nannys_own_setting_is_undone():
    assert _probe({"MALLOC_TRIM_THRESHOLD_": "65536"}) == "True"
    assert _probe({}) == "False"
    assert _probe({"MALLOC_TRIM_THRESHOLD_": "1000000"}) == "False"  # a site's own choice
    both = {"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "131072"}
    assert _probe(both) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_workers_of_a_dask_cluster_get_them():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        assert set(allocator_thresholds_applied(client).values()) == {None}
        on_dask_client(client, "test", None)
        assert set(allocator_thresholds_applied(client).values()) == {True}
        on_dask_client(client, "test", None)  # again, as every run on a kept cluster does
        assert set(allocator_thresholds_applied(client).values()) == {True}
        # A worker over half its memory limit gives freed memory back after each task.
        client.run(_set_trim_above, 1)
        client.gather(client.map(bytes, range(1, 9)))
        trims = client.run(lambda dask_worker: dask_worker.plugins[AllocatorThresholds.name].trims)
        assert sum(trims.values()) >= 8


def _set_trim_above(limit: int, dask_worker=None) -> None:
    dask_worker.plugins[AllocatorThresholds.name].trim_above = limit
