"""A cluster's Dask dashboard answers its owner and the facility's admins only (issue 13, item 2).

One facility whose clusters run under each user's own account, with users whose names are
prefixes of each other (``dsha``, ``dshab``) and an admin (``dsadm``). ``dshab`` and root
(through ``casa run``) each have a running cluster; ``dsha`` and anonymous callers try every
route to them: the gateway's ``/clusters/NAME/...`` and each HTTP port the cluster's
schedulers and workers listen on.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import aiohttp
import psutil
import pytest
import requests

from accounts import needs_xrootd_and_root, remove_unix_account
from casa.compute.gateway import gateway_client
from casa.generate.generator import generate_dataset
from casa.services.gateway.dashboards import SESSION_COOKIE, TICKET_PARAM

pytestmark = needs_xrootd_and_root("create the users' Unix accounts")

USERS = {"dsha": False, "dshab": False, "dsadm": True}  # name: facility admin
PAGES = ["status", "json/identity.json", "info/main/logs.html", "metrics", "workers"]

#: Run as another account: GET each (port, path) on loopback, print what answered.
PROBE = """
import json, sys, urllib.error, urllib.request
out = {}
for port, path in json.loads(sys.argv[1]):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as r:
            out[f"{port}/{path}"] = r.status
    except urllib.error.HTTPError as e:
        out[f"{port}/{path}"] = e.code
    except Exception as e:
        out[f"{port}/{path}"] = type(e).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The facility up, ``dshab``'s cluster with a worker, and root's from ``casa run``."""
    from conftest import new_facility_home, stop_everything

    f = new_facility_home('[gateway]\nbackend = "local-accounts"\n')
    for name in USERS:
        remove_unix_account(name)
    try:
        for name, admin in USERS.items():
            flags = ["--admin"] if admin else []
            p = f.casa("user", "add", name, *flags, "--password-stdin", input_text="pw-" * 4)
            assert p.returncode == 0, p.stderr
        up = f.casa("up")
        assert up.returncode == 0, up.stdout + up.stderr
        f.gateway_url = f"http://127.0.0.1:{f.ports['gateway']}"
        f.tokens = {n: f.ctx().request_token(user=n, kind="gateway") for n in USERS}
        with gateway_client(f.ctx(), token=f.tokens["dshab"]) as gateway:
            cluster = gateway.new_cluster(shutdown_on_close=False)
            cluster.scale(1)
            with cluster.get_client(set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
            f.cluster, f.link = cluster.name, cluster.dashboard_link
            cluster.close(shutdown=False)
        f.printed_link, f.root_cluster = _casa_run_link(f, tmp_path_factory.mktemp("dash"))
        yield f
    finally:
        f.casa("down")
        stop_everything(f.home)
        for name in USERS:
            remove_unix_account(name)


def _casa_run_link(f, tmp) -> tuple[str, str]:
    """``casa run --cluster gateway`` as root: the dashboard link it prints, and the cluster."""
    generate_dataset(tmp / "d", 4_000, 1, seed=3, workers=1)
    f.casa("datasets", "add", "dash-sim", tmp / "d", "--store", check=True)
    (tmp / "tok").write_text(f.token())
    run = f.casa("run", "dimuon", "--dataset", "dash-sim", "--cluster", "gateway", "--out",
                 tmp / "o", env={"BEARER_TOKEN_FILE": str(tmp / "tok"), "COLUMNS": "1000"},
                 check=True)  # fmt: skip
    link = re.search(r"Dask dashboard: (\S+)", run.stderr).group(1)
    return link, re.search(r"/clusters/([0-9a-f]+)/", link).group(1)


def _get(url: str, **kw) -> requests.Response:
    return requests.get(url, timeout=30, allow_redirects=False, **kw)


def test_other_accounts_get_nothing_through_the_gateway(site):
    """Anonymous, ``dsha`` (whose name begins ``dshab``'s) and forged credentials: no 200."""
    base = f"{site.gateway_url}/clusters/{site.cluster}"
    ticket = site.link.partition(f"{TICKET_PARAM}=")[2]
    _, expiry, sig = ticket.split(":")
    root_ticket = site.printed_link.partition(f"{TICKET_PARAM}=")[2]
    attempts = {
        "anonymous": {},
        "dsha's gateway token": {"headers": {"Authorization": f"Bearer {site.tokens['dsha']}"}},
        "a data token": {"headers": {"Authorization": f"Bearer {site.token('--user', 'dsha')}"}},
        "dshab's ticket renamed to dsha": {"params": {TICKET_PARAM: f"dsha:{expiry}:{sig}"}},
        "root's ticket, for another cluster": {"params": {TICKET_PARAM: root_ticket}},
        "a forged session cookie": {"cookies": {SESSION_COOKIE: f"dsha:{expiry}:{sig}"}},
    }
    answered = {
        (who, page): _get(f"{base}/{page}", **how).status_code
        for who, how in attempts.items()
        for page in PAGES
    }
    assert not [k for k, code in answered.items() if code not in (401, 403)], answered
    # dsha cannot get dshab's link from the gateway's API either.
    with gateway_client(site.ctx(), token=site.tokens["dsha"]) as dsha:
        assert dsha.list_clusters() == []
        with pytest.raises(Exception, match="403|lacks permissions"):
            dsha.connect(site.cluster)
    # What a refusal says.
    refusal = _get(f"{base}/status", headers=attempts["dsha's gateway token"]["headers"])
    assert (
        refusal.text.strip()
        == f"cluster {site.cluster} is not yours: a dashboard answers its owner only"
    )


def test_the_owner_and_an_admin_see_the_dashboard(site):
    base = f"{site.gateway_url}/clusters/{site.cluster}"
    with requests.Session() as browser:
        opened = browser.get(site.link, timeout=30)
        assert opened.status_code == 200 and "Dask" in opened.text
        assert opened.cookies.get(SESSION_COOKIE)
        # The page's own links and data load with the cookie the link set.
        identity = browser.get(f"{base}/json/identity.json", timeout=30)
        assert identity.status_code == 200 and identity.json()["type"] == "Scheduler"
        assert browser.get(f"{base}/info/main/logs.html", timeout=30).status_code == 200
    bearer = {"Authorization": f"Bearer {site.tokens['dshab']}"}
    assert _get(f"{base}/metrics", headers=bearer).status_code == 200
    admin = {"Authorization": f"Bearer {site.tokens['dsadm']}"}
    assert _get(f"{base}/status", headers=admin).status_code == 200


def test_the_link_casa_run_prints_opens_the_dashboard(site):
    assert TICKET_PARAM in site.printed_link
    assert _get(site.printed_link).status_code == 200
    assert _get(site.printed_link.partition("?")[0]).status_code == 401


def test_the_dashboards_websocket_passes_for_the_owner(site):
    """Bokeh's plots update over a websocket, through the gateway as well."""

    async def first_message() -> str:
        jar = aiohttp.CookieJar(unsafe=True)  # keeps cookies of 127.0.0.1, as browsers do
        async with aiohttp.ClientSession(cookie_jar=jar) as s:
            async with s.get(site.link) as page:
                token = re.search(r'"token":"([^"]+)"', await page.text()).group(1)
            ws_url = site.link.partition("?")[0].replace("http://", "ws://") + "/ws"
            async with s.ws_connect(ws_url, protocols=["bokeh", token]) as ws:
                return (await asyncio.wait_for(ws.receive(), 30)).data

    assert json.loads(asyncio.run(first_message()))["msgtype"] == "ACK"


def _cluster_http_ports(cluster: str) -> dict[int, str]:
    """Every TCP port the cluster's processes listen on, with the process's name."""
    pids = {}
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.environ().get("DASK_GATEWAY_CLUSTER_NAME") == cluster:
                pids[p.pid] = p.info["name"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {
        c.laddr.port: pids[c.pid]
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


@pytest.mark.parametrize("owner", ["dshab", "root"])
def test_no_port_of_a_cluster_answers_another_account(site, owner):
    """Each scheduler's and worker's own HTTP port (dashboard, metrics, the scheduler's
    /proxy/ route to workers) answers 403 without the key only the gateway holds."""
    cluster = site.cluster if owner == "dshab" else site.root_cluster
    ports = _cluster_http_ports(cluster)
    assert len(ports) >= 4, ports  # scheduler: comm, dashboard, gateway API; a worker: comm, http
    probes = [[port, page] for port in ports for page in PAGES]
    probes += [[port, f"proxy/{other}/127.0.0.1/status"] for port in ports for other in ports]
    probe = subprocess.run(
        ["runuser", "-u", "dsha", "--", "/usr/bin/python3", "-c", PROBE, json.dumps(probes)],
        capture_output=True, text=True, timeout=300, cwd="/",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    answered = json.loads(probe.stdout)
    assert not [k for k, v in answered.items() if v == 200], answered
    # The dashboards are there, and refuse: the scheduler's and the worker's HTTP servers.
    assert sum(1 for v in answered.values() if v == 403) >= 2 * len(PAGES), answered
