"""The decompression limit reads exactly the processors' branches and decompresses every byte."""

from __future__ import annotations

from pathlib import Path

import pytest
import uproot
from coffea import processor
from coffea.nanoevents import NanoAODSchema

from casa.analysis.processors import BUILTIN_PROCESSORS
from casa.bench.readlimit import (
    QUERY_BRANCHES,
    Basket,
    ReadLimitResult,
    branches_for,
    decompress_basket,
    measure_read_limit,
    plan_baskets,
    split_baskets,
)
from casa.errors import DataError, UsageError
from casa.generate.generator import BASKET_EVENTS, generate_dataset, generate_file

pytestmark = pytest.mark.filterwarnings(
    # NanoAODSchema on the generated layout: no cross-references, Photon_mass rebuilt.
    "ignore:Missing cross-reference:RuntimeWarning",
    "ignore:Branch .* already exists but its values will be replaced:RuntimeWarning",
)

#: Two files of 60,000 events: two baskets per branch in each file (50,000 events a basket).
EVENTS, FILES = 120_000, 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The generated dataset (zlib:1), with several baskets per branch."""
    out = tmp_path_factory.mktemp("bench-readlimit")
    generate_dataset(out, EVENTS, FILES, seed=9)
    paths = [str(p) for p in sorted(out.glob("*.root"))]
    with uproot.open(paths[0]) as f:
        assert f["Events/Jet_pt"].num_baskets == 2
    return paths


def expected_bytes(files: list[str], branches: list[str]) -> tuple[int, int]:
    """(sum of the baskets' fObjlen, sum of their fBasketBytes), as uproot reads them."""
    uncompressed = compressed = 0
    for path in files:
        with uproot.open(path) as f:
            tree = f["Events"]
            for name in branches:
                branch = tree[name]
                compressed += branch.compressed_bytes
                for i in range(branch.num_baskets):
                    uncompressed += branch.basket(i).member("fObjlen")
    return uncompressed, compressed


def test_query_branches_are_what_each_processor_reads(files):
    """coffea's access log of each processor names exactly the branches the limit reads."""
    for name, cls in BUILTIN_PROCESSORS.items():
        runner = processor.Runner(
            executor=processor.IterativeExecutor(status=False),
            schema=NanoAODSchema,
            chunksize=30_000,
            savemetrics=True,
        )
        fileset = {"sample": {"files": {files[0]: "Events"}}}
        _, metrics = runner(fileset, cls(), treename="Events")
        read = {column.rsplit("-", 1)[0] for column in metrics["columns"]}
        assert read == set(QUERY_BRANCHES[name]), name
        assert len(QUERY_BRANCHES[name]) == len(set(QUERY_BRANCHES[name]))
    assert set(QUERY_BRANCHES) == set(BUILTIN_PROCESSORS)


@pytest.mark.parametrize("query", sorted(QUERY_BRANCHES))
def test_bytes_are_every_basket_of_the_branches_on_1_and_2_workers(query, files):
    """Decompressed bytes are the baskets' fObjlen summed; 1 and 2 workers agree."""
    uncompressed, compressed = expected_bytes(files, QUERY_BRANCHES[query])
    one = measure_read_limit(query, files, 1)
    two = measure_read_limit(query, files, 2, repeat=2)
    for result in (one, two):
        assert isinstance(result, ReadLimitResult)
        assert result.events == EVENTS
        assert result.uncompressed_bytes == uncompressed
        assert result.compressed_bytes == compressed
        assert result.baskets == len(QUERY_BRANCHES[query]) * FILES * 2
        assert result.wall_seconds > 0 and result.mb_per_second > 0
        # The limit decompresses with the library casa's readers use (casa.data.codecs).
        assert result.zlib_library == "isal"
    assert (one.workers, two.workers) == (1, 2)
    # zlib:1 on these files saves at least a third of the bytes.
    assert compressed < 0.9 * uncompressed


@pytest.mark.parametrize("codec", ["zlib:1", "lz4:4", "zstd:5", "lzma:9"])
def test_decompressed_baskets_are_uproots(codec, tmp_path):
    """Every basket decompresses to the bytes uproot's TBasket holds, for every codec."""
    path = tmp_path / "codec.root"
    generate_file(path, 3_000, seed=3, codec=codec)
    baskets, events, branches = plan_baskets("adl8", [str(path)])
    assert events == 3_000 and branches == QUERY_BRANCHES["adl8"]
    with uproot.open(path) as f, open(path, "rb") as raw:
        tree = f["Events"]
        seen = 0
        for name in branches:
            branch = tree[name]
            seeks = branch.member("fBasketSeek")
            for i in range(branch.num_baskets):
                basket = Basket(str(path), int(seeks[i]), int(branch.member("fBasketBytes")[i]))
                assert basket in baskets
                raw.seek(basket.seek)
                content = decompress_basket(raw.read(basket.nbytes))
                assert content == bytes(branch.basket(i).raw_data), (codec, name)
                seen += 1
    assert seen == len(baskets) > 0
    result = measure_read_limit("adl8", [str(path)], 2)
    assert result.uncompressed_bytes == expected_bytes([str(path)], branches)[0]


def test_split_gives_each_basket_to_one_worker_and_balances_bytes():
    """Shares partition the baskets, read forwards, with loads within one basket of each other."""
    baskets = [Basket(f"f{i % 3}", 1000 * i, 100 + 37 * (i % 7)) for i in range(40)]
    shares = split_baskets(baskets, 3)

    def key(b: Basket) -> tuple[str, int]:
        return (b.path, b.seek)

    assert sorted((b for share in shares for b in share), key=key) == sorted(baskets, key=key)
    for share in shares:
        assert share == sorted(share, key=key)
    loads = [sum(b.nbytes for b in share) for share in shares]
    assert max(loads) - min(loads) <= max(b.nbytes for b in baskets)
    assert split_baskets(baskets[:1], 2)[1] == []


def test_branches_follow_the_processors_fallbacks():
    """Without MET or Jet_btag, the limit reads PFMET or DeepJet like the processors."""
    assert branches_for("adl1") == ["MET_pt"]
    assert branches_for("adl8", ["MET_pt", "MET_phi", "PFMET_pt"])[-2:] == ["MET_pt", "MET_phi"]
    assert branches_for("adl8", ["PFMET_pt", "PFMET_phi"])[-2:] == ["PFMET_pt", "PFMET_phi"]
    available = ["Jet_btagDeepB", "Jet_btagDeepFlavB"]
    assert branches_for("adl6", available)[-1] == "Jet_btagDeepFlavB"


def test_errors_name_the_problem(files, tmp_path):
    """Unknown query, remote file, missing branch and bad worker count are refused clearly."""
    with pytest.raises(UsageError, match="unknown query 'adl0'"):
        measure_read_limit("adl0", files, 1)
    with pytest.raises(UsageError, match="local files only"):
        measure_read_limit("adl1", ["root://127.0.0.1:1094//store/x.root"], 1)
    with pytest.raises(UsageError, match="workers must be at least 1"):
        measure_read_limit("adl1", files, 0)
    jets_only = tmp_path / "jets.root"
    with uproot.recreate(jets_only) as f:
        f.mktree("Events", {"nJet": "int32"})
        f["Events"].extend({"nJet": [1, 2, 3]})
    with pytest.raises(DataError, match="no branch MET_pt"):
        measure_read_limit("adl1", [str(jets_only)], 1)
    with pytest.raises(DataError, match="cannot read tree"):
        measure_read_limit("adl1", [str(Path(tmp_path) / "missing.root")], 1)
    assert BASKET_EVENTS == 50_000  # the basket count above assumes it
