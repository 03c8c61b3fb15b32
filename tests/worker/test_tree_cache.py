"""Trees kept open on Dask workers: each file's tree is read once per worker, results stay exact."""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from casa.compute.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.generate.generator import generate_file
from casa.worker.tree_cache import (
    TreeCache,
    register_tree_cache,
    tree_cache_options,
    tree_cache_stats,
)
from dask_runs import (
    ClientBackend,
    assert_same,
    generated_files,
    run_exactly,
    two_workers,
    values,
)

CHUNKSIZE = 4_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return generated_files(tmp_path_factory.mktemp("tree-cache"), 40_000, 2, seed=43)


@pytest.fixture(scope="module")
def client():
    with two_workers() as client:
        assert register_tree_cache(client)
        yield client


def _totals(client):
    stats = tree_cache_stats(client)
    assert all(s is not None for s in stats.values()), stats
    return {k: sum(s[k] for s in stats.values()) for k in ("trees", "opened", "hits", "bytes")}


def _run(query, files, backend, **kwargs):
    return run_exactly(query, files, backend, CHUNKSIZE, **kwargs)


def test_each_file_tree_is_read_once_per_worker(files, client):
    backend = ClientBackend(client)
    reference = _run("dimuon", files, IterativeBackend())
    before = _totals(client)
    result = _run("dimuon", files, backend, column_cache=False)
    after = _totals(client)
    assert result.extra["tree_cache"] is True
    assert_same(values(result.output), values(reference.output))
    # 10 chunks of 2 files on 2 workers: each worker reads each file's tree at most once,
    # every other chunk takes its tree from the kept file.
    opened = after["opened"] - before["opened"]
    assert 1 <= opened <= len(files) * 2
    assert after["hits"] - before["hits"] == result.chunks - opened
    # The baskets read through kept files are counted with the run's bytes: each chunk's
    # own share adds up to what the workers' kept files were asked for.
    assert result.extra["kept_bytes"] == after["bytes"] - before["bytes"] > 0
    without = _run("dimuon", files, backend, column_cache=False, tree_cache=False)
    assert without.extra["tree_cache"] is False
    assert _totals(client) == after  # switched off: the kept trees are not used
    assert result.bytes_read >= 0.9 * without.bytes_read > 0


def test_a_rewritten_file_is_read_anew(tmp_path, client):
    """Same path, new content: the kept tree is keyed by the file's UUID, not its path."""
    backend = ClientBackend(client)
    path = tmp_path / "events.root"
    outputs = []
    for seed in (1, 2):
        generate_file(path, n_events=8_000, seed=seed)
        info = [inspect_root_file(path, "Events")]
        kept = _run("adl2", info, backend, column_cache=False)
        fresh = _run("adl2", info, IterativeBackend())
        assert_same(values(kept.output), values(fresh.output))
        outputs.append(values(fresh.output))
    assert not np.array_equal(outputs[0]["jet_pt"], outputs[1]["jet_pt"])


def _open_key(path):
    f = uproot.open(path)
    return f, f.key("Events")


def test_plugin_keeps_forgets_and_bounds_its_trees(files):
    plugin = TreeCache(files=1)
    plugin.setup(worker=None)
    a, b = files[0].url, files[1].url
    fa, key_a = _open_key(a)
    first = plugin.tree(fa.file, key_a)
    assert first.num_entries == files[0].events
    assert plugin.tree(fa.file, key_a) is first  # the file opened for a chunk is not used
    assert plugin.stats()["opened"] == 1 and plugin.stats()["hits"] == 1
    assert not first.file.closed and first.file is not fa.file

    plugin.forget(a)  # after a failed chunk: the next one reads the tree again
    again = plugin.tree(fa.file, key_a)
    assert again is not first and plugin.stats()["opened"] == 2

    fb, key_b = _open_key(b)
    plugin.tree(fb.file, key_b)  # one file kept at most: a's is let go
    assert plugin.stats()["trees"] == 1
    assert plugin.stats()["bytes"] > 0
    plugin.teardown(worker=None)
    assert plugin.stats()["trees"] == 0
    for f in (fa, fb):
        f.close()


def test_the_tree_class_reads_as_uproot_does_off_a_worker(files):
    """Outside a worker (or on one without the plugin) the option changes nothing."""
    options = tree_cache_options()
    with uproot.open(files[0].url, **options) as f:
        tree = f["Events"]
        assert tree.num_entries == files[0].events
        assert tree.file is f.file
        values = tree["nMuon"].array(library="np")
    with uproot.open(files[0].url) as f:
        assert np.array_equal(values, f["Events"]["nMuon"].array(library="np"))
