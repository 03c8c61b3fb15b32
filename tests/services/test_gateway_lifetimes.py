"""A gateway cluster over several token lifetimes and a gateway crash: it keeps reading.

One real facility with ``issuer.token_lifetime = 30``: the second run waits until the
storage refuses a token younger than the workers' first one. Every run reads files its
workers have not opened before, so each presents the token the workers hold at that moment
to the real XRootD cache. Then the gateway is killed and started again: the cluster is listed again,
renewed again, runs again, and ``casa down`` leaves none of its processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
import uproot

from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.auth.tokens import unverified_claims
from casa.compute.gateway import GatewayBackend, Scaling, close_kept_connections, gateway_client
from casa.data.catalog import DatasetCatalog
from casa.data.sources import with_token
from casa.generate.generator import generate_dataset

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)

LIFETIME = 30
#: Longer than XRootD keeps an unused token it accepted (and than LIFETIME).
KEPT_SECONDS = 70
EVENTS = 4_000


def _store(f, tmp_path, name: str, seed: int, n_files: int = 1) -> list:
    folder = tmp_path / name
    generate_dataset(folder, EVENTS * n_files, n_files, seed=seed, workers=1)
    f.casa("datasets", "add", name, folder, "--store", check=True)
    return list(DatasetCatalog(f.ctx().paths.database).get(name).files)


def _refused(url: str, token: str) -> bool:
    try:
        uproot.open(with_token(url, token)).close()
    except OSError as e:
        assert "permission denied" in str(e)
        return True
    return False


def _wait_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _workers_token_expiry(client) -> set[int]:
    tokens = client.run(lambda: __import__("os").environ.get("BEARER_TOKEN"))
    return {unverified_claims(t)["exp"] for t in tokens.values()}


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def test_cluster_reads_across_lifetimes_and_outlives_a_gateway_restart(
    new_facility, tmp_path, monkeypatch
):
    f = new_facility(f'[gateway]\nbackend = "local"\n[issuer]\ntoken_lifetime = {LIFETIME}\n')
    f.supervisor().up()
    ctx = f.ctx()
    run0, used, probe, run1 = _store(f, tmp_path, "life", seed=40, n_files=4)
    _store(f, tmp_path, "life-2", seed=43)
    # The client side needs a token only to know that reads are authorised at all.
    monkeypatch.setenv("BEARER_TOKEN", f.token())
    backend = GatewayBackend(ctx, Scaling(workers=1))
    adl1 = load_processor("adl1")

    close_kept_connections()
    assert run_analysis(adl1, "life", [run0], backend).events == EVENTS
    with gateway_client(ctx) as g:
        [cluster] = g.list_clusters()
    # A token younger than the workers' first one (minted when the cluster was created),
    # used once after theirs was. XRootD keeps a token it accepted for about a minute after
    # its last use, also past its exp (here: kept 5 s after exp, gone 35 s after a use
    # 30 s earlier; kept while used every 2 s), so once this one is refused, theirs is.
    first = ctx.request_token()
    assert not _refused(used.url, first)  # (this process reopens a file it opened freely)
    _wait_until(time.time() + KEPT_SECONDS)
    assert _refused(probe.url, first), "the storage still accepts a token a run found stale"
    # A new file on the same connection (no token of the client's own is pushed on a kept
    # connection): only the gateway's renewal lets the workers open it.
    assert run_analysis(adl1, "life", [run1], backend).events == EVENTS
    close_kept_connections()

    # The gateway crashes; its clusters live on; 'casa up' brings it back and it finds them.
    with gateway_client(ctx) as g:
        connected = g.connect(cluster.name)
        client = connected.get_client(set_as_default=False)
        pids = list(client.run(os.getpid).values()) + [client.run_on_scheduler(os.getpid)]
        before = _workers_token_expiry(client)
        client.close()
        connected.close(shutdown=False)
    supervisor = f.supervisor()
    gateway = next(s for s in supervisor.services if s.name == "gateway")
    os.killpg(supervisor.running_pid(gateway), signal.SIGKILL)
    assert "restarted" in f.casa("up", check=True).stdout
    listed = json.loads(f.casa("cluster", "list", "--json", check=True).stdout)
    assert [(c["name"], c["status"]) for c in listed] == [(cluster.name, "running")]
    # The restarted gateway renews the clusters it found, without any client's help.
    with gateway_client(ctx) as g:
        connected = g.connect(cluster.name)
        client = connected.get_client(set_as_default=False)
        deadline = time.time() + LIFETIME / 2
        while time.time() < deadline and _workers_token_expiry(client) == before:
            time.sleep(1)
        assert min(_workers_token_expiry(client)) > max(before)
        client.close()
        connected.close(shutdown=False)

    token = tmp_path / "token"
    token.write_text(f.token())
    run = f.casa("run", "adl1", "--dataset", "life-2", "--cluster", "gateway", "--out",
                 tmp_path / "out", env={"BEARER_TOKEN_FILE": str(token)}, check=True)  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["events"] == EVENTS and summary["executor"] == f"gateway:{cluster.name}", run

    f.casa("down", check=True)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "a scheduler or worker outlived casa down"
