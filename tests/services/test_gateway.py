"""Per-user Dask clusters through the real Dask Gateway, with TLS, limits and tokens."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.auth.tokens import unverified_claims
from casa.compute.gateway import (
    KEPT,
    GatewayBackend,
    Scaling,
    apply_scaling,
    close_kept_connections,
    gateway_client,
)
from casa.compute.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.errors import DataError, UsageError
from casa.generate.generator import generate_dataset

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)


#: These tests' users have no Unix accounts: run clusters as the facility's own account.
LOCAL = 'backend = "local"\n'


def _gateway_for(facility, user):
    ctx = facility.ctx()
    return gateway_client(ctx, token=ctx.request_token(user=user, kind="gateway"))


@pytest.fixture(scope="module")
def gw(facility):
    return facility


def test_clusters_start_scale_stop_and_users_are_isolated(gw):
    with _gateway_for(gw, "alice") as alice, _gateway_for(gw, "bob") as bob:
        a = alice.new_cluster(shutdown_on_close=False)
        b = bob.new_cluster(shutdown_on_close=False)
        try:
            a.scale(2)
            client = a.get_client(set_as_default=False)
            client.wait_for_workers(2, timeout=60)
            assert len(client.scheduler_info()["workers"]) == 2
            # Workers carry the owner's data token, and only the owner's.
            subs = client.run(lambda: __import__("os").environ.get("BEARER_TOKEN"))
            assert {unverified_claims(t)["sub"] for t in subs.values()} == {"alice"}
            # TLS throughout: the scheduler listens on tls:// only.
            address = client.scheduler_info()["address"]
            assert address.startswith("tls://")
            from distributed import Client

            host_port = address.removeprefix("tls://")
            with pytest.raises((OSError, TimeoutError)):
                Client(f"tcp://{host_port}", timeout=3)
            with pytest.raises((OSError, TimeoutError)):
                Client(f"tcp://127.0.0.1:{gw.ports['gateway scheduler']}", timeout=3)
            client.close()
            a.scale(1)
            deadline = time.time() + 30
            while time.time() < deadline and len(a.scheduler_info["workers"]) != 1:
                time.sleep(0.5)
            assert len(a.scheduler_info["workers"]) == 1

            # alice sees only her cluster, and can neither connect to nor stop bob's.
            assert [c.name for c in alice.list_clusters()] == [a.name]
            assert [c.name for c in bob.list_clusters()] == [b.name]
            # (API calls, each from a fresh client: a GatewayCluster that fails half-way
            # through connecting can leave its client's event loop stuck.)
            with (
                _gateway_for(gw, "alice") as again,
                pytest.raises(Exception, match="(?i)not found|forbidden|lacks permissions"),
            ):
                again.get_cluster(b.name)
            with (
                _gateway_for(gw, "alice") as again,
                pytest.raises(Exception, match="(?i)not found|forbidden|lacks permissions"),
            ):
                again.stop_cluster(b.name)
            assert [c.name for c in bob.list_clusters()] == [b.name]
        finally:
            a.shutdown()
            b.shutdown()
        assert alice.list_clusters() == [] and bob.list_clusters() == []


def test_no_token_or_data_token_is_refused(gw):
    ctx = gw.ctx()
    data_token = ctx.request_token(user="alice")
    with (
        gateway_client(ctx, token=data_token) as g,
        pytest.raises(Exception, match="401|Unauthorized"),
    ):
        g.list_clusters()
    with (
        gateway_client(ctx, token="not-a-token") as g,
        pytest.raises(Exception, match="401|Unauthorized"),
    ):
        g.list_clusters()


def _gateway_api(gw, method: str, path: str, token: str, body=None, timeout: float = 30):
    """(status, JSON answer) of one request to the gateway's API through its proxy."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.ports['gateway']}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (``T`` when stopped), or why there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError as e:
        return f"no process: {e}"


def _wait_until_stopped(pid: int, timeout: float = 10) -> None:
    """Return once the kernel shows ``pid`` stopped (a signal is acted on asynchronously)."""
    deadline = time.monotonic() + timeout
    while _process_state(pid) != "T":
        assert time.monotonic() < deadline, f"{pid} did not stop: {_process_state(pid)!r}"
        time.sleep(0.01)


def test_minting_a_clusters_token_does_not_stall_the_gateway(gw):
    """The owner's data token is minted off the gateway's event loop: while the issuer is
    frozen in the middle of a cluster's start, the gateway still answers everyone else, and
    the cluster starts with its owner's token once the issuer answers."""
    ctx = gw.ctx()
    grace, bob = (ctx.request_token(user=u, kind="gateway") for u in ("grace", "bob"))
    supervisor = gw.supervisor()
    issuer, gateway = (next(s for s in supervisor.services if s.name == n)
                       for n in ("issuer", "gateway"))  # fmt: skip
    pid = supervisor.running_pid(issuer)
    started: dict = {}

    def start_cluster():
        started["answer"] = _gateway_api(gw, "POST", "/api/v1/clusters/", grace,
                                         {"cluster_options": {}})  # fmt: skip

    starting = threading.Thread(target=start_cluster)
    os.kill(pid, signal.SIGSTOP)  # it accepts into the kernel's queue, but does not answer
    try:
        _wait_until_stopped(pid)
        starting.start()
        time.sleep(1.5)  # the request is waiting for the issuer's answer
        begun = time.monotonic()
        assert _gateway_api(gw, "GET", "/api/health", bob, timeout=3)[1]["status"] == "pass"
        assert _gateway_api(gw, "GET", "/api/v1/clusters/", bob, timeout=3) == (200, {})
        answered = time.monotonic() - begun
        assert starting.is_alive(), (
            f"the cluster started without its token: {started}; the issuer is "
            f"{_process_state(pid)!r}; the gateway's log ends with:\n"
            + "\n".join(supervisor.log_file(gateway).read_text().splitlines()[-30:])
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    starting.join(timeout=30)
    assert answered < 3
    status, body = started["answer"]
    assert status == 201, body
    with _gateway_for(gw, "grace") as g:
        cluster = g.connect(body["name"])
        try:
            cluster.scale(1)
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(1, timeout=60)
            subs = client.run(lambda: __import__("os").environ.get("BEARER_TOKEN"))
            assert {unverified_claims(t)["sub"] for t in subs.values()} == {"grace"}
            client.close()
        finally:
            cluster.shutdown()


def test_cli_cluster_commands(gw, tmp_path):
    r = gw.casa("cluster", "list", "--json", check=True)
    assert json.loads(r.stdout) == []
    stored = tmp_path / "d"
    generate_dataset(stored, 6_000, 2, seed=8, workers=1)
    gw.casa("datasets", "add", "gw-sim", stored, "--store", check=True)
    token = tmp_path / "tok"
    token.write_text(gw.token())
    run = gw.casa("run", "dimuon", "--dataset", "gw-sim", "--cluster", "gateway", "--workers",
                  "2", "--out", tmp_path / "o", env={"BEARER_TOKEN_FILE": str(token)}, check=True)  # fmt: skip
    assert "Dask dashboard: http://127.0.0.1:" in " ".join(run.stderr.split())
    # What the user reads while waiting: a new cluster, then its workers as they come.
    said = " ".join(run.stderr.split())
    assert "starting a new cluster on the gateway" in said, run.stderr
    assert re.search(r"cluster \w+: [01] of 2 workers ready", said), run.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["executor"].startswith("gateway:") and summary["events"] == 6_000
    clusters = json.loads(gw.casa("cluster", "list", "--json", check=True).stdout)
    assert len(clusters) == 1 and clusters[0]["status"] == "running"
    name = clusters[0]["name"]
    # The next run reuses the running cluster.
    again = gw.casa("run", "adl1", "--dataset", "gw-sim", "--cluster", "gateway", "--out",
                    tmp_path / "o2", env={"BEARER_TOKEN_FILE": str(token)}, check=True)  # fmt: skip
    assert f"connecting to your cluster {name}" in " ".join(again.stderr.split()), again.stderr
    assert [c["name"] for c in json.loads(gw.casa("cluster", "list", "--json").stdout)] == [name]
    assert "scaled to 1" in gw.casa("cluster", "scale", name, "1", check=True).stdout
    bad = gw.casa("cluster", "stop", "nonexistent")
    assert bad.returncode == 2 and "no cluster named 'nonexistent'" in bad.stderr
    assert name in gw.casa("cluster", "stop", "--all", check=True).stdout
    assert json.loads(gw.casa("cluster", "list", "--json").stdout) == []


def test_limits_are_enforced_with_their_names(new_facility):
    f = new_facility(f"[gateway]\n{LOCAL}max_clusters_per_user = 1\nmax_cores_per_user = 3\n")
    f.supervisor().up()
    with _gateway_for(f, "carol") as g:
        cluster = g.new_cluster(shutdown_on_close=False)
        try:
            with pytest.raises(Exception, match="gateway.max_clusters_per_user"):
                g.new_cluster(shutdown_on_close=False)
            # Refused whole (dask-gateway alone would start 3 and warn): no worker starts.
            with pytest.raises(UsageError, match="ask for at most 3 workers") as refused:
                apply_scaling(cluster, Scaling(workers=5))
            assert "limit of 3 cores (gateway.max_cores_per_user in casa.toml)" in str(
                refused.value
            )
            with pytest.raises(UsageError, match="gateway.max_cores_per_user"):
                apply_scaling(cluster, Scaling(minimum=1, maximum=4))
            time.sleep(1)
            assert cluster.scheduler_info["workers"] == {}
            apply_scaling(cluster, Scaling(workers=3))  # what the limit allows still works
        finally:
            cluster.shutdown()


def test_default_limit_is_this_hosts_cores_and_a_request_above_it_is_refused_at_once(gw, tmp_path):
    from casa.services.gateway.service import host_resources

    cores, _ = host_resources()
    status = json.loads(gw.casa("status", "--json", check=True).stdout)
    [gateway] = [s for s in status if s["name"] == "gateway"]
    assert f"each user's workers: {cores} cores and" in gateway["detail"]
    data = tmp_path / "d"
    generate_dataset(data, 1_000, 1, seed=3, workers=1)
    gw.casa("datasets", "add", "gw-limit", data, check=True)
    started = time.time()
    run = gw.casa("run", "adl1", "--dataset", "gw-limit", "--cluster", "gateway", "--workers",
                  str(cores * 25), "--out", tmp_path / "o")  # fmt: skip
    assert time.time() - started < 20, "the refusal must come at once, not after a wait"
    assert run.returncode == 2, run.stderr
    message = " ".join(run.stderr.split())
    assert f"limit of {cores} cores (gateway.max_cores_per_user in casa.toml" in message
    assert f"ask for at most {cores} workers" in message and "Traceback" not in message
    # Nothing of the refused request is left: no cluster, no worker.
    assert json.loads(gw.casa("cluster", "list", "--json", check=True).stdout) == []
    assert not (tmp_path / "o" / "summary.json").exists()


def test_idle_clusters_are_culled(new_facility):
    f = new_facility(f"[gateway]\n{LOCAL}idle_timeout = 2\n")
    f.supervisor().up()
    with _gateway_for(f, "dave") as g:
        g.new_cluster(shutdown_on_close=False)
        deadline = time.time() + 60
        while time.time() < deadline and g.list_clusters():
            time.sleep(1)
        assert g.list_clusters() == [], "an idle cluster must be stopped after idle_timeout"


def _worker_pids(client) -> list[int]:
    return list(client.run(os.getpid).values())


def test_killed_worker_keeps_exact_counts(gw, tmp_path):
    data = tmp_path / "d"
    generate_dataset(data, 120_000, 4, seed=12, workers=1)
    files = [inspect_root_file(p, "Events") for p in sorted(data.glob("*.root"))]
    reference = run_analysis(
        load_processor("adl1"), "d", files, IterativeBackend(), chunksize=5_000
    )

    ctx = gw.ctx()
    backend = GatewayBackend(ctx, Scaling(workers=2))
    killed = []
    lock = threading.Lock()

    def kill_one_worker(chunks_done, events_done):
        if chunks_done < 3 or not lock.acquire(blocking=False):
            return
        if not killed:
            with gateway_client(ctx) as g:
                cluster = g.connect(g.list_clusters()[0].name)
                client = cluster.get_client(set_as_default=False)
                pid = _worker_pids(client)[0]
                client.close()
                cluster.close(shutdown=False)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    def slow_progress(chunks, events):
        threading.Thread(target=kill_one_worker, args=(chunks, events)).start()

    class SlowADL1(type(load_processor("adl1"))):
        """adl1 taking a quarter of a second a chunk, so that the run outlasts the kill
        (24 chunks on 2 workers; with the worker caches a plain adl1 run here ends in well
        under a second, sometimes before the killing thread has found the worker)."""

        def process(self, events):
            time.sleep(0.25)
            return super().process(events)

    result = run_analysis(SlowADL1(), "d", files, backend, chunksize=5_000,
                          on_progress=slow_progress)  # fmt: skip
    assert killed, "the test did not manage to kill a worker"
    assert result.events_per_file == {f.url: f.events for f in files}
    assert result.chunks_repeated == [] and result.skipped == []
    assert np.array_equal(result.output["met"].values(flow=True),
                          reference.output["met"].values(flow=True))  # fmt: skip
    with gateway_client(ctx) as g:
        for c in g.list_clusters():
            g.stop_cluster(c.name)


def test_failing_chunk_names_file_and_range_or_is_skipped(gw, tmp_path):
    data = tmp_path / "d"
    generate_dataset(data, 100_000, 1, seed=13, workers=1)
    path = data / "events_0000.root"
    info = inspect_root_file(path, "Events")
    # Corrupt MET_pt's second basket (entries 50,000-100,000: two chunks of 25,000).
    import uproot

    branch = uproot.open(path)["Events"]["MET_pt"]
    seek = branch.member("fBasketSeek")[1]
    raw = bytearray(path.read_bytes())
    raw[seek + 100 : seek + 400] = b"\\x00" * 300
    path.write_bytes(bytes(raw))
    backend = GatewayBackend(gw.ctx(), Scaling(workers=1))
    with pytest.raises(DataError) as failure:  # a data problem (exit 4), not the processor's
        run_analysis(load_processor("adl1"), "d", [info], backend, chunksize=25_000)
    assert "events_0000.root entries 50000-75000 cannot be read" in str(failure.value)
    result = run_analysis(load_processor("adl1"), "d", [info], backend, chunksize=25_000,
                          skip_bad_files=True)  # fmt: skip
    assert result.skipped == [(str(path), 50_000, 75_000), (str(path), 75_000, 100_000)]
    assert result.events == 50_000
    with gateway_client(gw.ctx()) as g:
        for c in g.list_clusters():
            g.stop_cluster(c.name)


def test_runs_in_one_process_share_a_connection_until_the_cluster_goes(gw, tmp_path):
    data = tmp_path / "d"
    generate_dataset(data, 20_000, 1, seed=14, workers=1)
    files = [inspect_root_file(p, "Events") for p in sorted(data.glob("*.root"))]
    ctx = gw.ctx()
    backend = GatewayBackend(ctx, Scaling(workers=1))

    def run():
        result = run_analysis(load_processor("adl1"), "d", files, backend, chunksize=5_000)
        assert result.events == 20_000
        return result.output["met"].values(flow=True)

    close_kept_connections()
    reference = run()
    [kept] = KEPT.idle()
    assert kept.usable()
    assert np.array_equal(run(), reference)
    assert KEPT.idle() == [kept]  # the second run used the same connection
    # The cluster stopped from elsewhere: the next run connects to a new one.
    with gateway_client(ctx) as g:
        for c in g.list_clusters():
            g.stop_cluster(c.name)
    assert np.array_equal(run(), reference)
    [again] = KEPT.idle()
    assert again is not kept and again.usable() and not kept.usable()
    close_kept_connections()
    assert KEPT.idle() == [] and not again.usable()
    with gateway_client(ctx) as g:
        for c in g.list_clusters():
            g.stop_cluster(c.name)


def test_closing_on_the_gateways_own_loop_does_not_hang(gw):
    """Garbage collection may run ``__del__`` (a close) on the event loop thread gateway
    clients share; a close there that waited for the loop would hang the process."""
    import asyncio

    g = _gateway_for(gw, "frank")
    cluster = g.new_cluster(shutdown_on_close=True)
    name = cluster.name

    async def close_both_there():
        cluster.close()  # as GatewayCluster.__del__ would, shutting the cluster down
        g.close()  # as Gateway.__del__ would
        await asyncio.sleep(0)

    done = asyncio.run_coroutine_threadsafe(close_both_there(), g.loop.asyncio_loop)
    done.result(timeout=20)  # a TimeoutError here is the hang
    with _gateway_for(gw, "frank") as again:
        deadline = time.time() + 30
        while time.time() < deadline and name in [c.name for c in again.list_clusters()]:
            time.sleep(0.5)
        assert name not in [c.name for c in again.list_clusters()]


@pytest.mark.parametrize("gateway_killed", [False, True], ids=["stopped", "killed"])
def test_down_stops_every_cluster_and_leaves_no_process(new_facility, gateway_killed):
    f = new_facility(f"[gateway]\n{LOCAL}")
    supervisor = f.supervisor()
    supervisor.up()
    with _gateway_for(f, "erin") as g:
        cluster = g.new_cluster(shutdown_on_close=False)
        cluster.scale(1)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=60)
        pids = _worker_pids(client) + [client.run_on_scheduler(os.getpid)]
        client.close()
        cluster.close(shutdown=False)
    if gateway_killed:
        # A crashed gateway: its own process group dies, its clusters (sessions of their
        # own) live on until casa down finds them.
        gateway = next(s for s in supervisor.services if s.name == "gateway")
        os.killpg(supervisor.running_pid(gateway), signal.SIGKILL)
        time.sleep(0.5)
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    f.casa("down", check=True)
    time.sleep(1)
    for pid in pids:
        assert (
            not os.path.exists(f"/proc/{pid}")
            or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] in "ZX"
        ), f"process {pid} outlived casa down"


def test_a_cluster_runs_from_its_creators_environment_and_no_other_accounts(gw, tmp_path):
    """Clusters made by casa run from the caller's Python environment (``python_env``):
    the workers' ``sys.prefix`` is this test's. The gateway refuses an environment that
    another account could change, or that is none, in words, and starts nothing."""
    import sys

    from casa.compute.gateway import caller_environment, find_or_create_cluster

    assert caller_environment() == sys.prefix
    with _gateway_for(gw, "envuser") as g:
        cluster = find_or_create_cluster(g)
        try:
            assert dict(g.list_clusters()[0].options)["python_env"] == sys.prefix
            cluster.scale(1)
            with cluster.get_client() as client:
                client.wait_for_workers(1, timeout=120)
                prefixes = set(client.run(lambda: __import__("sys").prefix).values())
            assert prefixes == {sys.prefix}
        finally:
            cluster.shutdown()
        writable = tmp_path / "shared-env"
        shutil.copytree(Path(sys.prefix) / "bin", writable / "bin", symlinks=True)
        (writable / "pyvenv.cfg").write_text((Path(sys.prefix) / "pyvenv.cfg").read_text())
        os.chmod(writable, 0o777)
        for env, says in ((str(writable), "may be changed by accounts other than envuser's"),
                          (str(tmp_path), "is not a Python environment with Dask's commands")):  # fmt: skip
            with pytest.raises(Exception) as refused:
                g.new_cluster(python_env=env, shutdown_on_close=False)
            assert says in str(refused.value), refused.value
        assert g.list_clusters() == []


def test_a_clusters_logs_are_there_while_it_runs_and_after_it_stopped(gw):
    """``casa cluster logs``: a running cluster's from its scheduler, then, once stopped,
    as the gateway kept them (the user's alone); one worker's; an unknown name in words."""
    import logging
    import uuid

    marker = f"casa-log-marker-{uuid.uuid4().hex}"
    with _gateway_for(gw, "root") as g:  # the CLI below asks as the account running it
        cluster = g.new_cluster(shutdown_on_close=False)
        name = cluster.name
        try:
            cluster.scale(1)
            with cluster.get_client(set_as_default=False) as client:
                client.wait_for_workers(1, timeout=120)
                client.run(lambda: logging.getLogger("distributed.worker").warning(marker))
            running = gw.casa("cluster", "logs", name, check=True).stdout
            assert "== scheduler" in running and marker in running, running
        finally:
            cluster.shutdown()
    kept = gw.home / "services" / "gateway" / "logs"
    deadline = time.monotonic() + 60  # the gateway stops the cluster after answering
    while not (kept / "root" / name).is_dir() and time.monotonic() < deadline:
        time.sleep(0.5)
    stopped = gw.casa("cluster", "logs", name, check=True).stdout
    assert "== scheduler" in stopped and marker in stopped, stopped
    (worker,) = re.findall(r"== worker-(\S+)", stopped)
    only = gw.casa("cluster", "logs", name, "--worker", worker, "--lines", "0", check=True).stdout
    assert "== scheduler" not in only and marker in only
    assert kept.stat().st_mode & 0o777 == 0o711 and (kept / "root").stat().st_mode & 0o777 == 0o711
    assert (kept / "root" / name).stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in (kept / "root" / name).iterdir()} == {0o600}
    unknown = gw.casa("cluster", "logs", "no-such-cluster")
    assert (
        unknown.returncode == 2 and "you have no cluster named 'no-such-cluster'" in unknown.stderr
    )
    assert name in unknown.stderr, "the refusal names the clusters whose logs are kept"
