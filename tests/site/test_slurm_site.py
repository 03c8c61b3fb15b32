"""casa across a site of hosts made of network namespaces, with workers from a real Slurm.

One ``casa.toml`` lays the facility out (``[site]``): ``head`` runs slurmctld, the issuer,
the origin, the gateway and the hub; ``c1``, beside the worker nodes, runs the XCache the
workers read through; ``s1`` (partition ``sched``) takes Dask schedulers and ``n1``/``n2``
(partition ``casa``, one core each) take workers. Each host has its own state directory.

- ``casa run --cluster gateway`` from head: the gateway submits the cluster's scheduler
  and workers as Slurm jobs (dask-gateway's SlurmBackend); the test checks where they run,
  that workers read through c1 with the user's token over TLS, stops n2 mid-run and still
  gets exact counts and the local run's histograms.
- dask-jobqueue's SLURMCluster from head (``casa.compute.slurm``), with the same checks.

Needs root and Debian's ``slurm-wlm`` and ``munge``; skipped without them except in CI.
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
import pytest

from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.auth.tokens import unverified_claims
from casa.compute.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.generate.generator import generate_dataset

sys.path.insert(0, str(Path(__file__).parent))
from netns_site import CACHE_IP, CACHE_PORTS, HEAD_IP, NetnsSite, missing_tools  # noqa: E402

CACHE_URL = f"root://{CACHE_IP}:{CACHE_PORTS['cache']}"
CLIENT_TIMEOUT = 150
EVENTS, FILES, CHUNK = 120_000, 4, 5_000

#: What the client runs in the head namespace (the workers unpickle SlowADL1 by value).
CLIENT = '''
import json, os, pickle, socket, sys, threading, time
from pathlib import Path
from coffea.processor import ProcessorABC
from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.compute.base import ComputeBackend, Scaling
from casa.compute.slurm import SlurmBackend
from casa.data.files import FileInfo

work = Path(sys.argv[1])
params = json.loads((work / "params.json").read_text())
files = [FileInfo(**f) for f in params["files"]]
facts = {}


class SlowADL1(ProcessorABC):
    """adl1, one second slower per chunk, so that a host can be stopped mid-run."""

    def __init__(self):
        self.inner = load_processor("adl1")

    def process(self, events):
        time.sleep(1.0)
        return self.inner.process(events)

    def postprocess(self, accumulator):
        return self.inner.postprocess(accumulator)


class Checked(ComputeBackend):
    """SlurmBackend, recording where the workers run before the run starts."""

    name = "slurm"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def start(self, stack):
        ob = stack.enter_context(self.inner)
        client = ob.client
        info = client.scheduler_info()
        facts["scheduler"] = info["address"]
        facts["workers"] = sorted(info["workers"])
        facts["hosts"] = sorted(client.run(socket.gethostname).values())
        env = client.run(lambda: [os.environ.get(k) for k in
                                  ("BEARER_TOKEN", "CASA_CACHE_URL")])
        facts["env"] = sorted({tuple(v) for v in env.values()})
        return ob


def on_progress(chunks, events):
    if chunks >= 3 and not (work / "stop-n2").exists():
        (work / "stop-n2").write_text(str(chunks))


backend = SlurmBackend(size=Scaling(workers=2), token=params["token"], cache_url=params["cache_url"],
                       interface="eth0", scheduler_interface="br0", cores=1,
                       memory="500MB", workdir=work / "cluster", wait_seconds=90,
                       job_extra_directives=["--exclusive"])  # one worker per host
result = run_analysis(SlowADL1(), "d", files, Checked(backend), chunksize=5000,
                      on_progress=on_progress)
facts["stopped_before_end"] = (work / "n2-stopped").exists()
facts["events_per_file"] = result.events_per_file
facts["chunks_repeated"] = result.chunks_repeated
facts["skipped"] = result.skipped
(work / "output.pkl").write_bytes(pickle.dumps(result.output))
(work / "facts.json").write_text(json.dumps(facts))
'''


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, slurmd)"
    missing = missing_tools()
    if missing:
        return f"needs Debian's slurm-wlm and munge: missing {', '.join(missing)}"
    return None


@pytest.fixture(scope="module")
def site():
    """Build the site (head, c1, s1, n1, n2) with the facility up; tear it all down afterwards."""
    reason = _usable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with NetnsSite(("n1", "n2"), cpus=1, facility=True, scheduler_nodes=("s1",)) as s:
        yield s


@pytest.fixture(scope="module")
def stored(site: NetnsSite):
    """A dataset stored on head's origin and catalogued through c1's cache, with adl1's
    reference result from the local files."""
    data = site.scratch / "data"
    generate_dataset(data, EVENTS, FILES, seed=21, workers=1)
    local = [inspect_root_file(p, "Events") for p in sorted(data.glob("*.root"))]
    reference = run_analysis(load_processor("adl1"), "d", local, IterativeBackend(),
                             chunksize=CHUNK)  # fmt: skip
    site.casa("head", "datasets", "add", "d", str(data), "--store")
    files = json.loads(site.casa("head", "datasets", "show", "d", "--json"))["files"]
    assert [f["url"] for f in files] == [
        f"{CACHE_URL}//store/data/d~/{p.name}" for p in sorted(data.glob("*.root"))
    ]
    assert [f["events"] for f in files] == [f.events for f in local]
    return files, local, reference


def test_casa_up_starts_each_service_on_its_host(site: NetnsSite) -> None:
    """The same casa.toml on head and c1: each host starts only its own services."""
    head, c1 = site.up_output["head"], site.up_output["c1"]
    for name in ("issuer", "origin", "gateway", "hub"):
        assert f"{name}" in head and f"{name:<8} started" in head, head
        assert f"{name:<8} runs on {HEAD_IP}" in c1, c1
    assert f"{'cache':<8} started" in c1 and f"{'cache':<8} runs on {CACHE_IP}" in head
    # c1 has no issuer key of its own: its cache took the issuer's keys from head over HTTP.
    assert not (site.cache_home / "keys" / "issuer.pub.pem").exists()
    assert (site.head_home / "keys" / "issuer.pub.pem").exists()
    status = site.casa("head", "status", "--json")
    rows = json.loads(status)
    assert [r["name"] for r in rows] == ["issuer", "origin", "gateway", "s3", "delivery", "hub"]
    assert all(r["healthy"] for r in rows)


def _run_client_stopping_n2(site: NetnsSite, work: Path, token: str) -> None:
    """Run the client in ``head``; stop host n2 when the client asks (after 3 chunks)."""
    log = work / "client.log"
    with open(log, "wb") as out:
        client = subprocess.Popen(
            site.in_head([sys.executable, str(work / "client.py"), str(work)]),
            env={**site.env(), "BEARER_TOKEN": token}, cwd=work, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while client.poll() is None and time.monotonic() < deadline:
            if (work / "stop-n2").exists() and not (work / "n2-stopped").exists():
                assert site.stop_host("n2"), "nothing ran on n2"
                (work / "n2-stopped").write_text("yes")
            time.sleep(0.2)
        try:
            client.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the client ran over {CLIENT_TIMEOUT} s: {log.read_text()[-5000:]}")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, log.read_text()[-5000:]


def test_slurmcluster_workers_on_two_hosts_survive_a_host_stop(site: NetnsSite, stored) -> None:
    """dask-jobqueue's SLURMCluster from head: workers on n1 and n2 over TLS read through
    c1's cache; losing n2 keeps exact counts."""
    files, local, reference = stored
    site.restart_host("n2")
    work = site.scratch / "client"
    work.mkdir()
    token = site.casa("head", "token", "issue", "--print").strip()
    (work / "params.json").write_text(json.dumps(
        {"files": files, "token": token, "cache_url": CACHE_URL}
    ))  # fmt: skip
    (work / "client.py").write_text(CLIENT)

    _run_client_stopping_n2(site, work, token)
    site.restart_host("n2")

    facts = json.loads((work / "facts.json").read_text())
    scripts = list((site.scratch / "state").glob("hash.*/job.*/script"))
    assert len(scripts) >= 2, "slurmctld kept no job scripts"
    assert not any(token in p.read_text(errors="replace") for p in scripts), "token in script"
    assert facts["hosts"] == ["n1", "n2"]
    assert facts["scheduler"].startswith("tls://")
    assert facts["workers"] and all(w.startswith("tls://") for w in facts["workers"])
    assert facts["env"] == [[token, CACHE_URL]]
    assert facts["stopped_before_end"], "n2 was stopped only after the run ended"
    assert facts["events_per_file"] == {f["url"]: f["events"] for f in files}
    cached = site.cache_home / "cache" / "store" / "data" / "d~"
    assert sorted(p.name for p in cached.glob("*.root")) == [f.url.rsplit("/", 1)[1]
                                                             for f in local]  # fmt: skip
    assert facts["chunks_repeated"] == [] and facts["skipped"] == []
    output = pickle.loads((work / "output.pkl").read_bytes())
    assert output.keys() == reference.output.keys()
    for key, h in reference.output.items():
        assert np.array_equal(output[key].values(flow=True), h.values(flow=True)), key


#: A user's processor file for ``casa run``: adl1, one second slower per chunk, leaving a
#: mark (host, time) in a folder all hosts share for each chunk it starts.
SLOW_PROCESSOR = """
import os, socket, time
from coffea.processor import ProcessorABC
from casa.analysis.registry import load_processor

MARKS = {marks!r}


class SlowADL1(ProcessorABC):
    def __init__(self):
        self.inner = load_processor("adl1")

    def process(self, events):
        host = socket.gethostname()
        with open(os.path.join(MARKS, f"{{host}}-{{os.getpid()}}-{{time.time():.6f}}"), "w"):
            pass
        time.sleep(1.0)
        return self.inner.process(events)

    def postprocess(self, accumulator):
        return self.inner.postprocess(accumulator)
"""


def test_casa_run_on_gateway_clusters_of_slurm_jobs(site: NetnsSite, stored) -> None:
    """casa run --cluster gateway: scheduler on s1, workers on n1 and n2 (Slurm jobs of the
    user), TLS, reads through c1 with the user's token; n2 stopped mid-run; exact counts."""
    files, local, reference = stored
    site.restart_host("n2")
    work = site.scratch / "gateway-run"
    marks = work / "marks"
    marks.mkdir(parents=True)
    os.chmod(work, 0o755)
    os.chmod(marks, 0o777)
    (work / "slow.py").write_text(SLOW_PROCESSOR.format(marks=str(marks)))
    out = work / "out"
    cmd = [sys.executable, "-m", "casa", "run", f"{work / 'slow.py'}:SlowADL1", "--dataset", "d",
           "--cluster", "gateway", "--workers", "2", "--worker-memory", "1",
           "--chunksize", str(CHUNK), "--out", str(out), "--no-plots"]  # fmt: skip
    # The client's own data token, in a file of this run (a fresh machine has none in
    # /tmp/bt_u$UID); the workers get theirs from the gateway.
    token_file = work / "bt"
    token_file.write_text(site.casa("head", "token", "issue", "--print").strip() + "\n")
    token_file.chmod(0o600)
    env = {**site.env(), "CASA_HOME": str(site.head_home), "BEARER_TOKEN_FILE": str(token_file)}
    env.pop("BEARER_TOKEN", None)
    log = work / "run.log"
    with open(log, "wb") as sink:
        run = subprocess.Popen(site.in_head(cmd), env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        hosts: set[str] = set()
        while run.poll() is None and time.monotonic() < deadline:
            hosts = {m.name.split("-")[0] for m in marks.iterdir()}
            if {"n1", "n2"} <= hosts and len(list(marks.iterdir())) >= 3:
                break
            time.sleep(0.2)
        assert {"n1", "n2"} <= hosts, f"chunks ran on {hosts}: {log.read_text()[-3000:]}"
        # Where the cluster runs, as Slurm and the hosts' own process tables show it.
        jobs = subprocess.run(
            site.in_head(["squeue", "-h", "-o", "%j %P %N"]),
            env=site.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        placed = sorted(tuple(j.split()[1:]) for j in jobs if j.startswith("dask-gateway"))
        assert placed == [("casa", "n1"), ("casa", "n2"), ("sched", "s1")], placed
        schedulers = site.processes("s1", "dask-scheduler")
        assert len(schedulers) == 1
        argv, _ = schedulers[0]
        assert argv[argv.index("--protocol") + 1] == "tls"
        assert argv[argv.index("--interface") + 1] == "eth0"
        for node in ("n1", "n2"):
            ((argv, wenv),) = site.processes(node, "dask-worker")
            scheduler = next(a for a in argv if a.startswith(("tls://", "tcp://")))
            assert scheduler.startswith("tls://10.87.0."), argv
            assert wenv["CASA_CACHE_URL"] == CACHE_URL
            assert wenv["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
            claims = unverified_claims(wenv["BEARER_TOKEN"])
            assert claims["sub"] == "root" and claims["aud"] == "casa"
        assert site.stop_host("n2"), "nothing ran on n2"
        stopped_at = time.time()
        run.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, log.read_text()[-5000:]
    assert any(float(m.name.rsplit("-", 1)[1]) > stopped_at for m in marks.iterdir()), (
        "no chunk started after n2 was stopped: the run ended before the stop"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events_per_file"] == {f["url"]: f["events"] for f in files}
    assert summary["chunks_counted_twice"] == [] and summary["chunks_skipped"] == []
    output = pickle.loads((out / "result.pkl").read_bytes())
    assert output.keys() == reference.output.keys()
    for key, h in reference.output.items():
        assert np.array_equal(output[key].values(flow=True), h.values(flow=True)), key
    cached = site.cache_home / "cache" / "store" / "data" / "d~"
    assert sorted(p.name for p in cached.glob("*.root")) == [f.url.rsplit("/", 1)[1]
                                                             for f in local]  # fmt: skip
    site.casa("head", "cluster", "stop", "--all")
    # Its jobs' logs outlive it: the scheduler's (on s1) and the workers' (n1; n2 until
    # it was stopped), kept by the gateway from the cluster's staging folder.
    name = summary["executor"].removeprefix("gateway:")
    logs = site.casa("head", "cluster", "logs", name, "--lines", "0")
    assert "== scheduler" in logs and "Scheduler at:" in logs, logs[-3000:]
    assert "== worker-" in logs and "Start worker at:" in logs, logs[-3000:]
    site.restart_host("n2")
