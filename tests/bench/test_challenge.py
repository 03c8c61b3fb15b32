"""The wide-file query on its own: coffea's NanoEvents against plain uproot + numpy."""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from casa.bench.challenge import ChallengeProcessor, reference_counts
from casa.bench.engines import flow_counts
from casa.bench.readlimit import measure_read_limit
from casa.errors import AnalysisError
from casa.generate.generator import generate_file
from casa.generate.wide import challenge_branches


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.root"
    generate_file(path, 3_000, seed=5, layout="nanoaod-wide")
    return str(path)


def test_challenge_counts_equal_uproots(wide_file):
    """Every branch of the quarter is materialised; the counts are uproot's exactly."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with uproot.open(wide_file) as f:
        names = list(f["Events"].keys())
    branches = challenge_branches(names)
    assert len(names) > 1000 and 0.2 < len(branches) / len(names) < 0.3
    events = NanoEventsFactory.from_root(
        {wide_file: "Events"}, schemaclass=NanoAODSchema, mode="eager"
    ).events()
    got = flow_counts(ChallengeProcessor(branches).process(events))
    want = reference_counts([wide_file], branches)
    assert set(got) == {"nonzero"}
    np.testing.assert_array_equal(got["nonzero"], want["nonzero"])
    # Something was counted in most branches (rare trigger bits may count none) (a branch of zeros would prove nothing).
    assert np.count_nonzero(want["nonzero"]) > 0.6 * len(branches)
    # Counters count events with at least one object: never more than the events.
    n_jet = branches.index("nJet")
    assert 0 < want["nonzero"][n_jet] <= 3_000


def test_a_branch_the_events_lack_is_named(wide_file):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    events = NanoEventsFactory.from_root(
        {wide_file: "Events"}, schemaclass=NanoAODSchema, mode="eager"
    ).events()
    with pytest.raises(AnalysisError, match="Jet_noSuchField"):
        ChallengeProcessor(["Jet_noSuchField"]).process(events)


def test_the_limit_reads_the_same_branches(wide_file):
    """The decompression limit of the challenge query covers exactly its branches' baskets."""
    result = measure_read_limit("challenge", [wide_file], 1)
    with uproot.open(wide_file) as f:
        tree = f["Events"]
        branches = challenge_branches(tree.keys())
        compressed = sum(
            int(sum(tree[b].member("fBasketBytes")[: tree[b].member("fWriteBasket")]))
            for b in branches
        )
    assert result.events == 3_000
    assert result.compressed_bytes > 0
    # Basket bytes include each basket's key header; the limit counts the payload.
    assert result.compressed_bytes <= compressed
    assert result.compressed_bytes > 0.8 * compressed
