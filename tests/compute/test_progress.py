"""Progress from a Dask cluster's workers reaches the caller, without chunks waiting for it."""

from __future__ import annotations

import time
import uuid

import pytest

from casa.compute import on_dask
from dask_runs import two_workers


@pytest.fixture(scope="module")
def client():
    with two_workers() as client:
        yield client


def _report(n: int, reporter) -> int:
    reporter(n)
    return n


def test_every_report_arrives_in_its_own_runs_channel(client):
    """20 chunks' reports on 2 workers all arrive (the workers send them without waiting);
    a later run's reports go to its own channel, none to the earlier one's."""
    first, second = (on_dask.DaskQueueChannel(client, f"casa-progress-{uuid.uuid4().hex}")
                     for _ in range(2))  # fmt: skip
    for channel, numbers in ((first, range(1, 21)), (second, range(100, 104))):
        reporter = channel.reporter()
        futures = client.map(_report, numbers, reporter=reporter, pure=False)
        assert client.gather(futures) == list(numbers)
        got: list[int] = []
        deadline = time.monotonic() + 10
        while len(got) < len(numbers) and time.monotonic() < deadline:
            got += channel.drain()
            time.sleep(0.02)
        assert sorted(got) == list(numbers)
    assert first.drain() == [] and second.drain() == []
