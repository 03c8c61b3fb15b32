"""casa workers from a real Slurm (slurmctld + two slurmd) on hosts made of network namespaces.

The client (scheduler, coffea runner) runs in the site's ``head`` namespace; workers are
Slurm jobs on ``n1`` and ``n2``, over TLS, reading ``root://`` through the XCache on ``c1``
with the user's token. Early in the run ``n2`` is stopped (every process on it killed, its
link taken down) and the run must still count each file exactly.
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
from casa.cluster.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.data.generator import generate_dataset

sys.path.insert(0, str(Path(__file__).parent))
from netns_site import CACHE_IP, CACHE_PORTS, NetnsSite, missing_tools  # noqa: E402

CACHE_URL = f"root://{CACHE_IP}:{CACHE_PORTS['cache']}"
CLIENT_TIMEOUT = 150

#: What the client runs in the head namespace (the workers unpickle SlowADL1 by value).
CLIENT = '''
import json, os, pickle, socket, sys, threading, time
from pathlib import Path
from coffea.processor import ProcessorABC
from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.cluster.base import ComputeBackend
from casa.cluster.slurm import SlurmBackend
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
        self.inner = inner

    def open(self, workers):
        import contextlib

        @contextlib.contextmanager
        def opened():
            with self.inner.open(workers) as ob:
                client = ob.executor.client
                info = client.scheduler_info()
                facts["scheduler"] = info["address"]
                facts["workers"] = sorted(info["workers"])
                facts["hosts"] = sorted(client.run(socket.gethostname).values())
                env = client.run(lambda: [os.environ.get(k) for k in
                                          ("BEARER_TOKEN", "CASA_CACHE_URL")])
                facts["env"] = sorted({tuple(v) for v in env.values()})
                yield ob
        return opened()


def on_progress(chunks, events):
    if chunks >= 3 and not (work / "stop-n2").exists():
        (work / "stop-n2").write_text(str(chunks))


backend = SlurmBackend(token=params["token"], cache_url=params["cache_url"],
                       interface="eth0", scheduler_interface="br0", cores=1,
                       memory="500MB", workdir=work / "cluster", wait_seconds=90,
                       job_extra_directives=["--exclusive"])  # one worker per host
result = run_analysis(SlowADL1(), "d", files, Checked(backend), workers=2, chunksize=5000,
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
    """Build the site (head, n1, n2); tear it all down afterwards."""
    reason = _usable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with NetnsSite(("n1", "n2"), cache=True) as s:
        yield s


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
        client.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, log.read_text()[-5000:]


def test_slurm_workers_on_two_hosts_survive_a_host_stop(site: NetnsSite) -> None:
    """Workers on n1 and n2 over TLS read through c1's cache; losing n2 keeps exact counts."""
    work = site.scratch / "client"
    data = site.scratch / "data"
    work.mkdir()
    generate_dataset(data, 120_000, 4, seed=21, workers=1)
    local = [inspect_root_file(p, "Events") for p in sorted(data.glob("*.root"))]
    reference = run_analysis(load_processor("adl1"), "d", local, IterativeBackend(),
                             chunksize=5_000)  # fmt: skip
    site.casa_on_cache("datasets", "add", "d", str(data), "--store")
    files = json.loads(site.casa_on_cache("datasets", "show", "d", "--json"))["files"]
    assert [f["url"] for f in files] == [
        f"{CACHE_URL}//store/data/d/{p.name}" for p in sorted(data.glob("*.root"))
    ]
    token = site.casa_on_cache("token", "issue", "--print").strip()
    (work / "params.json").write_text(json.dumps(
        {"files": files, "token": token, "cache_url": CACHE_URL}
    ))  # fmt: skip
    (work / "client.py").write_text(CLIENT)

    _run_client_stopping_n2(site, work, token)

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
    assert [f["events"] for f in files] == [f.events for f in local]
    cached = site.cache_home / "cache" / "store" / "data" / "d"
    assert sorted(p.name for p in cached.glob("*.root")) == [f.url.rsplit("/", 1)[1]
                                                             for f in local]  # fmt: skip
    assert facts["chunks_repeated"] == [] and facts["skipped"] == []
    output = pickle.loads((work / "output.pkl").read_bytes())
    assert output.keys() == reference.output.keys()
    for key, h in reference.output.items():
        assert np.array_equal(output[key].values(flow=True), h.values(flow=True)), key
