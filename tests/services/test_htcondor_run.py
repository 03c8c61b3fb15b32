"""``casa run --cluster htcondor`` from submission to histograms, with a stand-in for HTCondor.

HTCondor cannot be installed here: ``condor_submit`` and ``condor_rm`` are played by
tests/services/condor_standin.py, which runs each job exactly as its submit description
says (transferred files in a scratch folder, its environment, its command). Everything
else is real: the facility's issuer, origin and cache, dask-jobqueue's HTCondorCluster
with casa's settings, TLS, the token file sent with the job, reads through the cache.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import uproot

from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.compute.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.generate.generator import generate_dataset
from casa.services.issuer.service import IssuerService
from casa.services.supervisor import Supervisor
from casa.services.xrootd.service import CacheService, OriginService
from multi_module import expected, write_analysis

STANDIN = Path(__file__).with_name("condor_standin.py")


def _standin_path(folder: Path) -> str:
    """A folder with condor_submit and condor_rm (the stand-in), first on PATH."""
    folder.mkdir()
    for name, action in (("condor_submit", "submit"), ("condor_rm", "rm")):
        tool = folder / name
        tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" {action} "$@"\n')
        tool.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def test_casa_run_on_htcondor_workers(new_facility, tmp_path):
    f = new_facility(
        '[htcondor]\ncontact_host = "127.0.0.1"\nlisten_host = "127.0.0.1"\n'
        f'worker_cores = 1\nworker_memory = "1g"\npython = "{sys.executable}"\n'
        'accounting_group = "group_test"\n'
    )
    ctx = f.ctx()
    Supervisor(ctx, [IssuerService(), OriginService(), CacheService()]).up()
    data = tmp_path / "data"
    generate_dataset(data, 40_000, 2, seed=5, workers=1)
    f.casa("datasets", "add", "d", data, "--store", check=True)
    token = f.token()
    state = tmp_path / "condor"
    state.mkdir()
    out = tmp_path / "out"
    env = {"PATH": _standin_path(tmp_path / "bin"), "CONDOR_STANDIN_DIR": str(state),
           "BEARER_TOKEN": token}  # fmt: skip
    env_without = {k: v for k, v in f.env.items() if k != "BEARER_TOKEN_FILE"}
    done = subprocess.run(
        [sys.executable, "-m", "casa", "run", "adl1", "--dataset", "d", "--cluster", "htcondor",
         "--workers", "2", "--chunksize", "5000", "--out", str(out), "--no-plots"],
        capture_output=True, text=True, timeout=300, env={**env_without, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    log = [json.loads(line) for line in (state / "log.jsonl").read_text().splitlines()]
    submits = [e for e in log if e["action"] == "submit"]
    assert len(submits) == 2
    for e in submits:
        # The token (spilled from $BEARER_TOKEN to a private file) and the TLS files travel.
        assert len(e["transferred"]) == 4 and any(n.startswith("bt_") for n in e["transferred"])
        scratch = state / f"job-{e['cluster']}"
        token_copy = next(scratch.glob("bt_*"))
        assert token_copy.read_text().strip() == token
        assert token_copy.stat().st_mode & 0o777 == 0o600
    # The jobs were removed at the end, and their workers are gone.
    assert sorted(e["cluster"] for e in log if e["action"] == "rm") == [1, 2]
    deadline = time.monotonic() + 15
    while any(_alive(e["pid"]) for e in submits) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(e["pid"]) for e in submits)
    # Exact counts and the histograms of a local run; the files went through the cache.
    summary = json.loads((out / "summary.json").read_text())
    files = json.loads(f.casa("datasets", "show", "d", "--json", check=True).stdout)["files"]
    assert summary["events_per_file"] == {x["url"]: x["events"] for x in files}
    assert summary["executor"] == "htcondor" and summary["workers"] == 2
    assert summary["chunks_counted_twice"] == [] and summary["chunks_skipped"] == []
    local = [inspect_root_file(p, "Events") for p in sorted(data.glob("*.root"))]
    reference = run_analysis(load_processor("adl1"), "d", local, IterativeBackend(),
                             chunksize=5000)  # fmt: skip
    output = pickle.loads((out / "result.pkl").read_bytes())
    for key, h in reference.output.items():
        assert np.array_equal(output[key].values(flow=True), h.values(flow=True)), key
    cached = ctx.paths.cache_disk / "store" / "data" / "d~"
    assert sorted(p.name for p in cached.glob("*.root")) == sorted(
        p.name for p in data.glob("*.root")
    )

    # A multi-module analysis: its folder reaches the jobs' workers, which run elsewhere.
    folder = tmp_path / "ana"
    proc = write_analysis(folder, "condor")
    out = tmp_path / "out-own"
    done = subprocess.run(
        [sys.executable, "-m", "casa", "run", f"{proc}:Scaled", "--arg", "column=MET.pt",
         "--dataset", "d", "--cluster", "htcondor", "--workers", "1", "--out", str(out),
         "--no-plots"],
        capture_output=True, text=True, timeout=300, env={**env_without, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    output = pickle.loads((out / "result.pkl").read_bytes())
    met = np.concatenate(
        [
            uproot.open(p)["Events"]["MET_pt"].array(library="np")
            for p in sorted(data.glob("*.root"))
        ]
    )
    assert np.array_equal(output["x"].values(), expected(met))
    (package_at,) = output["package_at"]
    assert not package_at.startswith(str(folder)) and "casa-analysis-" in package_at
