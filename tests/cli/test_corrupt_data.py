"""A corrupt basket on every local executor: exit 4 and one sentence naming the file and
entries, or, with --skip-bad-files, a finished run that lists the chunk."""

from __future__ import annotations

import json

import pytest
import uproot

from casa.generate.generator import generate_file

#: The generator writes baskets of 50,000 entries: 60,000 events make a second basket of
#: 10,000, exactly one chunk of 10,000 entries.
EVENTS, CHUNK, BAD = 60_000, 10_000, (50_000, 60_000)


@pytest.fixture(scope="module")
def corrupt_file(tmp_path_factory):
    """A generated file whose MET_pt basket for entries 50,000-60,000 is overwritten."""
    path = tmp_path_factory.mktemp("corrupt") / "events_0000.root"
    generate_file(path, EVENTS, seed=31)
    branch = uproot.open(path)["Events"]["MET_pt"]
    assert list(branch.member("fBasketEntry")[:3]) == [0, *BAD]
    seek = int(branch.member("fBasketSeek")[1])
    raw = bytearray(path.read_bytes())
    raw[seek + 100 : seek + 400] = b"\x00" * 300  # inside the compressed payload
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("executor", ["iterative", "futures", "dask"])
def test_corrupt_basket_is_one_sentence_or_skipped(casa, corrupt_file, tmp_path, executor):
    out = tmp_path / "out"
    args = ("run", "adl1", "--files", corrupt_file, "--executor", executor, "--workers", "2",
            "--chunksize", CHUNK, "--no-plots")  # fmt: skip
    r = casa(*args, "--out", out)
    assert r.code == 4, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("casa: error:")]
    assert errors == [
        f"casa: error: {corrupt_file} entries {BAD[0]}-{BAD[1]} cannot be read (IsalError: "
        "Error -2 Invalid deflate symbol found); replace the file, or run again with "
        "--skip-bad-files to leave out the chunks that cannot be read"
    ], r.err
    assert "Traceback" not in r.err and "process pool" not in r.err
    assert not out.exists()  # a failed run writes nothing

    r = casa(*args, "--out", out, "--skip-bad-files")
    assert r.code == 0, r.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks_skipped"] == [
        {"file": str(corrupt_file), "entry_start": BAD[0], "entry_stop": BAD[1]}
    ]
    assert summary["events"] == EVENTS - (BAD[1] - BAD[0])
    assert f"the first {corrupt_file} entries {BAD[0]}-{BAD[1]}" in r.out
    assert "Traceback" not in r.err and "Skipping bad file" not in r.err
