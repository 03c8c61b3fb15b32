"""JupyterHub end to end: log in, spawn as the user's own account, run on the gateway through
the cache with the user's token; isolation between users; errors users meet."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import uproot
import websocket

from accounts import needs_xrootd_and_root, remove_unix_account
from casa.auth.accounts import AccountStore
from casa.generate.generator import generate_dataset
from casa.services.hub.config import hub_api_token, user_env_prefix
from hub_client import HubAdmin, HubClient, Kernel, Terminal
from wheels import build_wheel

pytestmark = needs_xrootd_and_root("create the users' Unix accounts")

USERS = {"tcalice": "alice-password", "tcbob": "bob-password"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A whole facility with two users, the demo-like dataset stored, the hub up."""
    from conftest import new_facility_home, stop_everything

    f = new_facility_home("[hub]\ntoken_renewal = 3\n")
    for name in USERS:
        remove_unix_account(name)
    for name, password in USERS.items():
        p = f.casa("user", "add", name, "--password-stdin", input_text=password)
        assert p.returncode == 0, p.stderr
    data = tmp_path_factory.mktemp("hub-data")
    generate_dataset(data, 30_000, 2, seed=99, workers=1)
    f.casa("datasets", "add", "demo", data, "--store", check=True)
    f.casa("datasets", "add", "bobs", data / "events_0000.root", "--store", "--user", "tcbob",
           check=True)  # fmt: skip
    up = f.casa("up")
    assert up.returncode == 0, up.stdout + up.stderr
    f.base = f"http://127.0.0.1:{f.ports['hub']}"
    f.admin = HubAdmin(f.base, hub_api_token(f.ctx()))
    f.data = data
    yield f
    f.casa("down")
    stop_everything(f.home)
    for name in USERS:
        remove_unix_account(name)


def test_up_prints_the_hub_url(hub):
    status = {s["name"]: s for s in json.loads(hub.casa("status", "--json").stdout)}
    assert status["hub"]["healthy"]
    assert f"at {hub.base}" in status["hub"]["detail"]
    login = requests.get(f"{hub.base}/hub/login", timeout=30).text
    assert "casa: an analysis facility. Log in with your facility account" in login


def test_login_spawn_and_analysis_in_the_users_kernel(hub, tmp_path):
    browser = HubClient(hub.base)
    r = browser.login("tcalice", USERS["tcalice"])
    assert r.status_code == 200
    assert "/user/tcalice/" in r.url or "/hub/spawn-pending/tcalice" in r.url
    hub.admin.spawn("tcalice")
    lab = browser.session.get(f"{hub.base}/user/tcalice/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text

    kernel = Kernel(hub.base, "tcalice", hub.admin.user_token("tcalice"))
    try:
        who = kernel.execute(
            "import getpass, os, stat\n"
            "print(getpass.getuser())\n"
            "p = os.environ['BEARER_TOKEN_FILE']\n"
            "print(oct(stat.S_IMODE(os.stat(p).st_mode)), os.stat(p).st_uid == os.getuid())\n"
            "print(sorted(os.listdir(os.path.expanduser('~/examples'))))"
        )
        assert who["error"] is None, who["error"]
        lines = who["stdout"].split("\n")
        assert lines[0] == "tcalice", "the server must run as the user's own account"
        assert lines[1] == "0o600 True"
        assert "dimuon.ipynb" in lines[2] and "adl_walkthrough.ipynb" in lines[2]

        result = kernel.execute(
            "import pickle, warnings\n"
            "warnings.simplefilter('ignore')\n"
            "from casa import connect, run\n"
            "client = connect(workers=2)\n"
            "out = run('adl5', 'demo', client)\n"
            "print('COUNTS', list(map(int, out['met'].values(flow=True))))\n"
            "print('WORKERS', len(client.scheduler_info()['workers']))\n"
            "import getpass\n"
            "print('RUN AS', sorted(set(client.run(getpass.getuser).values())))",
            timeout=300,
        )
        assert result["error"] is None, result["error"]
        counts = next(line for line in result["stdout"].splitlines() if line.startswith("COUNTS"))
        token = tmp_path / "tok"
        token.write_text(hub.token())
        hub.casa("run", "adl5", "--dataset", "demo", "--out", tmp_path / "o", "--executor",
                 "iterative", env={"BEARER_TOKEN_FILE": str(token)}, check=True)  # fmt: skip
        expected = pickle.loads((tmp_path / "o" / "result.pkl").read_bytes())["met"]
        assert counts == "COUNTS " + str(list(map(int, expected.values(flow=True))))
        assert sum(expected.values()) > 0
        assert "WORKERS 2" in result["stdout"]
        assert "RUN AS ['tcalice']" in result["stdout"], "workers must run as the user's account"

        # alice's catalog does not list bob's dataset, and her kernel cannot read it.
        shown = json.loads(hub.casa("datasets", "show", "bobs", "--json", check=True).stdout)
        refused = kernel.execute(
            "import json, os, uproot\n"
            "from casa import datasets\n"
            "print('LISTED', sorted(datasets()))\n"
            f"url = {shown['files'][0]['url']!r}\n"
            "try:\n"
            "    uproot.open(url)\n"  # plain uproot: its XRootD client finds the token itself
            "    print('READ')\n"
            "except Exception as e:\n"
            "    print('REFUSED', e)"
        )
        assert "LISTED ['demo']" in refused["stdout"], refused
        assert "REFUSED" in refused["stdout"] and "[3010]" in refused["stdout"]
        assert "Bearer%20" not in refused["stdout"], "tokens must not appear in error messages"

        # The ServiceX client in her kernel, as it is: the hub wrote ~/servicex.yaml, the lab
        # sets BEARER_TOKEN_FILE; the skim is made on her own cluster, as her.
        skim = kernel.execute(
            "import os, uproot\n"
            "from casa import fileset\n"
            "from servicex import dataset, deliver, query\n"
            "os.chdir(os.path.expanduser('~'))\n"
            "q = query.UprootRaw([{'treename': 'Events', 'filter_name': 'MET_pt',\n"
            "                      'cut': 'MET_pt > 60'}])\n"
            "files = deliver({'Sample': [{'Name': 'k', 'Query': q,\n"
            "                 'Dataset': dataset.GenericDataSet('casa', 'demo')}]},\n"
            "                progress_bar='none', return_exceptions=False)['k']\n"
            "print('DELIVERED', sum(uproot.open(f)['Events'].num_entries for f in files))\n"
            "urls = fileset('demo')['demo']['files']\n"
            "import numpy as np\n"
            "print('DIRECT', sum(int(np.sum(uproot.open(u)['Events']['MET_pt'].array(\n"
            "                    library='np') > 60)) for u in urls))\n"
            "print('MINE', all(os.stat(f).st_uid == os.getuid() for f in files))",
            timeout=300,
        )
        assert skim["error"] is None, skim["error"]
        lines = dict(line.split(" ", 1) for line in skim["stdout"].splitlines() if " " in line)
        assert lines.get("DELIVERED") == lines.get("DIRECT") and int(lines["DIRECT"]) > 0, skim
        assert lines.get("MINE") == "True", skim
    finally:
        kernel.close()


def test_datasets_added_while_the_lab_runs_reach_it_at_once(hub):
    """The admin adds datasets after alice's lab started: her next datasets() lists them, and
    she reads the new public one; bob's private datasets stay out; removing takes them away.
    (The hub renews tokens every 3 s here, and a renewal does not rewrite the catalog.)"""
    hub.admin.spawn("tcalice")
    kernel = Kernel(hub.base, "tcalice", hub.admin.user_token("tcalice"))
    listing = "from casa import datasets\nprint('LISTED', sorted(datasets()))"
    public = hub.home / "services" / "hub" / "catalog.json"
    try:
        assert "LISTED ['demo']" in kernel.execute(listing)["stdout"]
        hub.casa("datasets", "add", "later", hub.data / "events_0001.root", "--store",
                 check=True)  # fmt: skip
        own = hub.home / "services" / "hub" / "catalogs" / "tcalice.json"
        assert "later" in json.loads(own.read_text()), "written by the command, not later"
        hub.casa("datasets", "add", "alices", hub.data / "events_0000.root", "--store",
                 "--user", "tcalice", check=True)  # fmt: skip
        seen = kernel.execute(listing)
        assert "LISTED ['alices', 'demo', 'later']" in seen["stdout"], seen
        read = kernel.execute(
            "import uproot\n"
            "from casa import fileset\n"
            "url = next(iter(fileset('later')['later']['files']))\n"
            "print('EVENTS', uproot.open(url)['Events'].num_entries)"
        )
        assert "EVENTS 15000" in read["stdout"], read
        assert sorted(json.loads(public.read_text())) == ["demo", "later"]
        hub.casa("datasets", "remove", "later", check=True)
        hub.casa("datasets", "remove", "alices", check=True)
        assert "LISTED ['demo']" in kernel.execute(listing)["stdout"]
        assert sorted(json.loads(public.read_text())) == ["demo"]
    finally:
        kernel.close()


def test_users_cannot_reach_each_other(hub):
    hub.admin.spawn("tcbob")
    alice = HubClient(hub.base)
    alice.login("tcalice", USERS["tcalice"])
    hub.admin.spawn("tcalice")
    mine = alice.session.get(f"{hub.base}/user/tcalice/api/status")
    assert mine.status_code == 200 and "kernels" in mine.json()
    r = alice.session.get(f"{hub.base}/user/tcbob/api/status", allow_redirects=True)
    assert r.status_code == 403, (r.status_code, r.url)
    assert "kernels" not in r.text
    bob_home = pwd.getpwnam("tcbob").pw_dir
    assert os.stat(bob_home).st_mode & 0o077 == 0, "homes are private"


def test_tokens_are_renewed_while_the_server_runs(hub):
    path = os.path.join(pwd.getpwnam("tcalice").pw_dir, ".casa", "bearer_token")
    hub.admin.spawn("tcalice")
    first = open(path).read()
    deadline = time.time() + 20
    while time.time() < deadline and open(path).read() == first:
        time.sleep(0.5)
    assert open(path).read() != first, "the hub must renew a running server's tokens"


def test_bad_login_and_unknown_user(hub):
    for user, password in (("tcalice", "wrong-password"), ("nobody-here", "whatever1")):
        r = HubClient(hub.base).login(user, password)
        assert "Invalid username or password" in r.text
        assert "/hub/login" in r.url


def test_failed_spawn_is_explained(hub):
    AccountStore(hub.ctx().paths.database).add("tcghost", "ghost-password")
    browser = HubClient(hub.base)
    browser.login("tcghost", "ghost-password")
    r = browser.session.get(f"{hub.base}/hub/spawn/tcghost", allow_redirects=True)
    page = r.text
    deadline = time.time() + 30
    while "no Unix account" not in page and time.time() < deadline:
        time.sleep(1)
        page = browser.session.get(f"{hub.base}/hub/spawn-pending/tcghost").text
        page += browser.session.get(f"{hub.base}/hub/api/users/tcghost/server/progress",
                                    stream=False).text  # fmt: skip
    assert "there is no Unix account 'tcghost'" in page
    status = {s["name"]: s for s in json.loads(hub.casa("status", "--json").stdout)}
    assert "failed spawns: tcghost: there is no Unix account 'tcghost'" in status["hub"]["detail"]
    requests.delete(f"{hub.base}/hub/api/users/tcghost", headers=hub.admin.headers)


def _stdout_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(
        "".join(out["text"]) for c in cells for out in c.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )  # fmt: skip


def test_the_dask_panel_lists_the_users_gateway_clusters(hub):
    """The lab's Dask panel (dask-labextension's API through the user's server): a cluster
    the user made elsewhere is listed, NEW makes a cluster with workers, the panel's stop
    stops it on the gateway, and another user's cluster is never listed."""
    from casa.compute.gateway import gateway_client

    _stop_clusters_of(hub, "tcalice")  # earlier tests' clusters hold the user's cores
    _stop_clusters_of(hub, "tcbob")
    hub.admin.spawn("tcalice")
    alice = {"Authorization": f"token {hub.admin.user_token('tcalice')}"}
    url = f"{hub.base}/user/tcalice/dask/clusters"

    def listed() -> dict[str, dict]:
        r = requests.get(url, headers=alice, timeout=60)
        assert r.status_code == 200, r.text
        return {c["name"]: c for c in r.json()}

    bobs_token = hub.ctx().request_token(user="tcbob", kind="gateway")
    with gateway_client(hub.ctx(), token=bobs_token) as gateway:
        bobs = gateway.new_cluster(shutdown_on_close=False).name
    alices_token = hub.ctx().request_token(user="tcalice", kind="gateway")
    with gateway_client(hub.ctx(), token=alices_token) as gateway:
        made_elsewhere = gateway.new_cluster(shutdown_on_close=False).name
    panel = listed()
    assert made_elsewhere in panel and bobs not in panel, panel
    assert panel[made_elsewhere]["dashboard_link"].startswith(
        f"http://127.0.0.1:{hub.ports['gateway']}/clusters/{made_elsewhere}/"
    )
    requests.delete(f"{url}/{panel[made_elsewhere]['id']}", headers=alice, timeout=60)

    r = requests.put(url, headers=alice, timeout=180)  # NEW
    assert r.status_code == 200, r.text
    new = r.json()
    deadline = time.monotonic() + 180
    while listed()[new["name"]]["workers"] < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert listed()[new["name"]]["workers"] == 2
    assert requests.delete(f"{url}/{new['id']}", headers=alice, timeout=60).status_code == 204
    with gateway_client(hub.ctx(), token=alices_token) as gateway:
        running = [c.name for c in gateway.list_clusters()]
    assert new["name"] not in running and made_elsewhere not in running
    assert listed() == {}
    _stop_clusters_of(hub, "tcbob")


def _stop_clusters_of(hub, user: str) -> None:
    from casa.compute.gateway import gateway_client

    token = hub.ctx().request_token(user=user, kind="gateway")
    with gateway_client(hub.ctx(), token=token) as gateway:
        for report in gateway.list_clusters():
            gateway.stop_cluster(report.name)


def test_the_lab_shows_the_users_own_dashboard_only(hub):
    """dask-labextension's panels (through the user's server) reach the gateway cluster's
    dashboard with the user's gateway token; another user's hub token gets nothing."""
    _stop_clusters_of(hub, "tcalice")  # earlier tests' clusters hold the user's cores
    hub.admin.spawn("tcalice")
    hub.admin.spawn("tcbob")
    alice = {"Authorization": f"token {hub.admin.user_token('tcalice')}"}
    bob = {"Authorization": f"token {hub.admin.user_token('tcbob')}"}
    clusters = f"{hub.base}/user/tcalice/dask/clusters"
    model = requests.put(clusters, headers=alice, timeout=120).json()
    try:
        panels = f"{hub.base}/user/tcalice/dask/dashboard/{model['id']}"
        plots = requests.get(f"{panels}/individual-plots.json", headers=alice, timeout=60)
        assert plots.status_code == 200 and "Individual Task Stream" in plots.json(), plots.text[
            :300
        ]
        status = requests.get(f"{panels}/status", headers=alice, timeout=60)
        assert status.status_code == 200 and "bokeh" in status.text
        bokeh_session = re.search(r'"token":"([^"]+)"', status.text).group(1)
        ws = websocket.create_connection(
            f"{panels.replace('http://', 'ws://')}/status/ws", timeout=60,
            header=[f"Authorization: {alice['Authorization']}"],
            subprotocols=["bokeh", bokeh_session],
        )  # fmt: skip
        try:
            assert json.loads(ws.recv())["msgtype"] == "ACK"  # the plots' updates flow
        finally:
            ws.close()
        stolen = requests.get(f"{panels}/status", headers=bob, timeout=60, allow_redirects=False)
        assert stolen.status_code in (302, 403, 404)
        assert "bokeh" not in stolen.text
        direct = requests.get(model["dashboard_link"].partition("?")[0], headers=bob, timeout=60)
        assert direct.status_code == 401
    finally:
        requests.delete(f"{clusters}/{model['id']}", headers=alice, timeout=60)


def _z_candidates(files) -> tuple[int, int, int]:
    """Independently of coffea (uproot, awkward, numpy): events, opposite-charge muon pairs
    of mass 60-120 GeV, and events with such a pair and MET below 200 GeV (adl5's filled bins)."""
    import awkward as ak
    import numpy as np
    import uproot

    events = pairs = selected = 0
    for path in files:
        t = uproot.open(path)["Events"]
        mu = t.arrays(["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge", "MET_pt"])
        p4 = ak.zip({"pt": mu.Muon_pt, "eta": mu.Muon_eta, "phi": mu.Muon_phi,
                     "m": mu.Muon_mass, "q": mu.Muon_charge})  # fmt: skip
        a, b = ak.unzip(ak.combinations(p4, 2))

        def parts(v):
            px, py, pz = v.pt * np.cos(v.phi), v.pt * np.sin(v.phi), v.pt * np.sinh(v.eta)
            return px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + v.m**2)

        (ax, ay, az, ae), (bx, by, bz, be) = parts(a), parts(b)
        mass = np.sqrt(np.maximum((ae + be) ** 2 - (ax + bx) ** 2 - (ay + by) ** 2
                                  - (az + bz) ** 2, 0))  # fmt: skip
        z_like = (a.q != b.q) & (mass > 60) & (mass < 120)
        events += len(mu)
        pairs += int(ak.sum(z_like))
        selected += int(np.sum(ak.any(z_like, axis=1) & (mu.MET_pt < 200)))
    return events, pairs, selected


NEWCOMER = ("tcnew", "newcomer-password")


def test_a_newcomers_first_hour_in_the_browser(hub):
    """The newcomer's path in the order the README gives it, in Debian's Chromium driven by
    playwright-core: the admin adds them; they log in; run each example notebook to its plot
    (dimuon, the flagship, then one of each of coffea's styles: Runner, dask mode, preprocess
    + apply_to_fileset, on their gateway cluster, reading root:// with nothing but what the
    hub gave them); see that cluster in the Dask panel and its task stream drawn; open a
    Terminal from the File menu and run 'casa datasets list' and 'casa cluster list' there;
    'pip install' a package (a wheel built here: no network) and run a processor that uses
    it on their gateway workers; stop the cluster and read its logs. What each step printed
    equals an independent uproot + numpy computation or what the facility records."""

    node = shutil.which("node")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    browser = Path(__file__).parents[1] / "browser"
    if (node is None or not Path(chromium).exists()) and not os.environ.get("CI"):
        pytest.skip("needs node and Debian's chromium (make install puts them in place)")
    artifacts = Path(
        os.environ.get("CASA_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
    )
    artifacts.mkdir(parents=True, exist_ok=True)
    user, password = NEWCOMER
    remove_unix_account(user)
    added = hub.casa("user", "add", user, "--password-stdin", input_text=password)
    assert added.returncode == 0, added.stderr
    try:
        _newcomer_in_the_browser(hub, user, password, node, chromium, browser, artifacts)
    finally:
        with contextlib.suppress(Exception):
            _stop_clusters_of(hub, user)
        hub.admin.stop(user)
        hub.casa("user", "remove", user)
        remove_unix_account(user)


def _newcomer_in_the_browser(hub, user, password, node, chromium, browser, artifacts):
    from casa.compute.gateway import gateway_client

    events, pairs, selected = _z_candidates(sorted(hub.data.glob("*.root")))
    assert pairs > 0 and selected > 0
    names = ("dimuon", "dask_mode", "apply_to_fileset", "adl_walkthrough")
    p = subprocess.run(
        [node, str(browser / "notebook.mjs"), hub.base, user, password, str(artifacts),
         *(f"examples/{name}.ipynb" for name in names)],
        capture_output=True, text=True, timeout=1200, cwd=browser,
        env={**os.environ, "CHROMIUM": chromium},
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    # What each cell printed, as the lab saved it in the user's notebook.
    account = pwd.getpwnam(user)
    home = Path(account.pw_dir)
    printed = {name: _stdout_of(home / "examples" / f"{name}.ipynb") for name in names}
    assert "lab loaded" in p.stdout
    # The facility's name, as the login page has it, in the lab's window title too.
    name = hub.ctx().config.facility.name
    assert re.search(rf"^TITLE (.* - )?{name} JupyterLab$", p.stdout, re.M), p.stdout
    for name in names:
        assert f"PLOT OK examples/{name}.ipynb" in p.stdout, p.stdout
        assert (artifacts / f"{name}.png").stat().st_size > 10_000
    assert "the Z peak is at 9" in printed["dimuon"], printed["dimuon"]
    z_line = f"{events} events, {pairs} opposite-charge muon pairs between 60 and 120 GeV"
    assert z_line in printed["dask_mode"], printed["dask_mode"]
    assert z_line in printed["apply_to_fileset"], printed["apply_to_fileset"]
    mine, built_in = map(float, re.findall(r"[\d.]+", printed["adl_walkthrough"])[-2:])
    assert mine == built_in == selected, printed["adl_walkthrough"]
    # The Dask panel, after dimuon ran: the cluster the notebook used, its dashboard drawn.
    token = hub.ctx().request_token(user=user, kind="gateway")
    with gateway_client(hub.ctx(), token=token) as gateway:
        running = [c.name for c in gateway.list_clusters()]
    panel = re.findall(r"^PANEL (\S+)$", p.stdout, re.M)
    assert panel and set(panel) <= set(running), (panel, running, p.stdout)
    assert "DASHBOARD Task Stream" in p.stdout and "PLOT DRAWN Task Stream" in p.stdout, p.stdout

    # The lab's terminal, typed into: casa, a package of their own, their cluster's logs.
    wheel = build_wheel(home, "casa_lab_pkg", factor=3.0)
    (home / "pkg_analysis.py").write_text(PACKAGE_ANALYSIS)
    for path in (wheel, home / "pkg_analysis.py"):
        os.chown(path, account.pw_uid, account.pw_gid)
    listing = "import json, sys; print(json.load(sys.stdin)[0]['name'])"
    commands = [
        "cd ~ && { command -v casa; casa datasets list; casa cluster list; } > step-1.txt 2>&1",
        f"pip install --no-index ~/{wheel.name} > step-2.txt 2>&1",
        "casa run ~/pkg_analysis.py:Scaled --dataset demo --cluster gateway --out ~/t-pkg "
        "--no-plots > step-3.txt 2>&1",
        f'name=$(casa cluster list --json | python3 -c "{listing}"); echo $name > step-name.txt',
        "casa cluster stop --all > step-4.txt 2>&1; casa cluster logs $name > step-5.txt 2>&1;"
        " touch step-done",
    ]
    t = subprocess.run(
        [node, str(browser / "terminal.mjs"), hub.base, user, password, str(artifacts),
         str(home / "step-done"), *commands],
        capture_output=True, text=True, timeout=900, cwd=browser,
        env={**os.environ, "CHROMIUM": chromium},
    )  # fmt: skip
    step = {
        i: (home / f"step-{i}.txt").read_text()
        for i in range(1, 6)
        if (home / f"step-{i}.txt").exists()
    }
    assert t.returncode == 0, (t.stdout + t.stderr, step)
    first = step[1].splitlines()
    assert first[0] == f"{home}/.casa/envs/default/bin/casa", step[1]
    assert "demo" in step[1] and any(n in step[1] for n in running), step[1]
    assert "Successfully installed casa-lab-pkg-0.1" in step[2], step[2]
    result = pickle.loads((home / "t-pkg" / "result.pkl").read_bytes())
    (package_at,) = result["package_at"]
    assert package_at.startswith(f"{home}/.casa/envs/default/lib/"), (package_at, step[3])
    met = np.concatenate([uproot.open(f)["Events"]["MET_pt"].array(library="np")
                          for f in sorted(hub.data.glob("*.root"))])  # fmt: skip
    scaled = met * 3.0
    counts, _ = np.histogram(scaled[scaled < 400], bins=np.linspace(0, 400, 41))
    assert np.array_equal(result["met"].values(), counts)
    stopped = (home / "step-name.txt").read_text().strip()
    assert stopped in running and stopped in step[4], (stopped, step[4])
    with gateway_client(hub.ctx(), token=token) as gateway:
        assert stopped not in [c.name for c in gateway.list_clusters()]
    assert "== scheduler" in step[5] and "== worker-" in step[5], step[5]


def test_casa_works_in_the_lab_terminal(hub):
    """The lab's Terminal tab, typed into as a user would: the kernel's environment first on
    PATH, and casa reaching the facility from the user's own account: the datasets they may
    read, a token, their clusters, runs here and on the gateway; admin commands refused in
    one sentence, changing nothing."""
    _stop_clusters_of(hub, "tcalice")
    hub.admin.spawn("tcalice")
    home = Path(pwd.getpwnam("tcalice").pw_dir)
    bin_dir = home / ".casa" / "envs" / "default" / "bin"  # the user's own environment
    catalog = hub.casa("datasets", "export").stdout
    term = Terminal(hub.base, "tcalice", hub.admin.user_token("tcalice"))
    try:
        code, out = term.run("command -v casa python3 pip")
        assert out.split() == [str(bin_dir / n) for n in ("casa", "python3", "pip")], out

        code, out = term.run("casa datasets list")
        assert code == 0 and "demo" in out, out
        assert "bobs" not in out, "tcbob's own dataset is not tcalice's to see"
        code, out = term.run("casa datasets show demo --json")
        assert code == 0, out
        assert json.loads(out) == json.loads(hub.casa("datasets", "show", "demo", "--json").stdout)
        code, out = term.run("casa datasets show bobs")
        assert code == 4 and "no dataset named 'bobs'" in out, out
        code, out = term.run("casa datasets export demo")
        assert code == 0 and json.loads(out) == {"demo": json.loads(catalog)["demo"]}, out

        code, out = term.run("casa token issue && casa token show --json")
        assert code == 0, out
        shown = json.loads(out[out.index("{") :])
        assert shown["claims"]["sub"] == "tcalice" and shown["seconds_left"] > 60

        code, out = term.run("casa run adl1 --dataset demo --executor iterative --out ~/t-local "
                             "--no-plots")  # fmt: skip
        assert code == 0, out
        code, out = term.run("casa run adl1 --dataset demo --cluster gateway --workers 1 "
                             "--out ~/t-gateway --no-plots")  # fmt: skip
        assert code == 0, out
        local, remote = (pickle.loads((home / d / "result.pkl").read_bytes())
                         for d in ("t-local", "t-gateway"))  # fmt: skip
        assert np.array_equal(local["met"].values(flow=True), remote["met"].values(flow=True))
        code, out = term.run("casa cluster list --json")
        assert code == 0 and len(json.loads(out)) == 1, out
        name = json.loads(out)[0]["name"]
        code, out = term.run("casa cluster stop --all")
        assert code == 0 and "stopped" in out, out
        # The stopped cluster's logs, kept for tcalice alone.
        kept = hub.home / "services" / "gateway" / "logs" / "tcalice" / name
        deadline = time.monotonic() + 60  # the gateway stops the cluster after answering
        while not kept.is_dir() and time.monotonic() < deadline:
            time.sleep(0.5)
        code, out = term.run(f"casa cluster logs {name} --lines 0")
        assert code == 0 and "== scheduler" in out and "== worker-" in out, out
        assert kept.stat().st_uid == pwd.getpwnam("tcalice").pw_uid

        for command in ("casa up", "casa down", "casa user add tcmallory",
                        "casa datasets add mine ~/t-local", "casa datasets remove demo",
                        f"casa datasets import {home}/f.json"):  # fmt: skip
            code, out = term.run(command)
            assert code == 2, (command, out)
            assert "is for the facility's admin" in out and "Traceback" not in out, out
            assert len(out.strip().splitlines()) == 1, out
    finally:
        term.close()
    assert hub.casa("datasets", "export").stdout == catalog
    assert {s["name"]: s["healthy"] for s in json.loads(hub.casa("status", "--json").stdout)}["hub"]


PACKAGE_ANALYSIS = """
import hist
from coffea import processor

import casa_lab_pkg


class Scaled(processor.ProcessorABC):
    def process(self, events):
        h = hist.Hist.new.Reg(40, 0, 400, name="met").Double()
        h.fill(met=casa_lab_pkg.scaled(events.MET.pt))
        return {"met": h, "package_at": {casa_lab_pkg.__file__: 1}}

    def postprocess(self, accumulator):
        return accumulator
"""


def test_a_package_installed_in_the_lab_reaches_the_kernel_and_the_workers(hub):
    """``pip install`` in the lab's terminal, with no admin (a wheel built here: no network):
    the user's kernel imports it, and their processor using it runs on their gateway
    cluster, whose workers run from the user's environment. The facility's stays as it was."""
    from casa.services.hub.config import user_env_prefix

    _stop_clusters_of(hub, "tcalice")
    hub.admin.spawn("tcalice")
    account = pwd.getpwnam("tcalice")
    home = Path(account.pw_dir)
    env = home / ".casa" / "envs" / "default"
    wheel = build_wheel(home, "casa_lab_pkg", factor=3.0)
    (home / "pkg_analysis.py").write_text(PACKAGE_ANALYSIS)
    for path in (wheel, home / "pkg_analysis.py"):
        os.chown(path, account.pw_uid, account.pw_gid)
    term = Terminal(hub.base, "tcalice", hub.admin.user_token("tcalice"))
    try:
        code, out = term.run(f"pip install --no-index {wheel}")
        assert code == 0 and "Successfully installed casa-lab-pkg-0.1" in out, out
        code, out = term.run("casa run ~/pkg_analysis.py:Scaled --dataset demo --cluster "
                             "gateway --workers 1 --out ~/t-pkg --no-plots")  # fmt: skip
        assert code == 0, out
    finally:
        term.close()
    result = pickle.loads((home / "t-pkg" / "result.pkl").read_bytes())
    (package_at,) = result["package_at"]
    assert package_at.startswith(f"{env}/lib/"), package_at
    met = np.concatenate([uproot.open(p)["Events"]["MET_pt"].array(library="np")
                          for p in sorted(hub.data.glob("*.root"))])  # fmt: skip
    scaled = met * 3.0
    counts, _ = np.histogram(scaled[scaled < 400], bins=np.linspace(0, 400, 41))
    assert np.array_equal(result["met"].values(), counts)

    kernel = Kernel(hub.base, "tcalice", hub.admin.user_token("tcalice"))
    try:
        done = kernel.execute(
            "import casa_lab_pkg, sys\nfrom casa import connect\nclient = connect(workers=1)\n"
            "print(sys.prefix, casa_lab_pkg.FACTOR)\n"
            "print(set(client.run(lambda: __import__('casa_lab_pkg').__file__).values()))"
        )
        assert done["error"] is None, done["error"]
        first, second = done["stdout"].strip().splitlines()
        assert first == f"{env} 3.0"
        assert second == repr({f"{site_dir(env)}/casa_lab_pkg/__init__.py"})
    finally:
        kernel.close()
        _stop_clusters_of(hub, "tcalice")
    facility = user_env_prefix(hub.ctx())
    assert not list(facility.glob("lib/python3*/site-packages/casa_lab_pkg*"))


def site_dir(env: Path) -> str:
    (found,) = env.glob("lib/python3*/site-packages")
    return str(found)


def test_the_spawn_page_offers_the_users_environments(hub):
    """A second environment of the user's own, made with 'casa env create' in the lab's
    terminal, makes the spawn page offer it; the server started from it (through the page's
    form, as a browser posts it) runs its kernels from it, and its clusters' workers follow;
    the facility's environment alone is offered too; a name the user never made is refused
    with what to do."""
    home = Path(pwd.getpwnam("tcalice").pw_dir)
    made = home / ".casa" / "envs" / "analysis"
    hub.admin.spawn("tcalice")
    browser = HubClient(hub.base)
    browser.login("tcalice", USERS["tcalice"])
    page = browser.session.get(f"{hub.base}/hub/spawn/tcalice").text
    assert 'name="env"' not in page  # one environment: no choice to make, no page
    term = Terminal(hub.base, "tcalice", hub.admin.user_token("tcalice"))
    try:
        code, out = term.run("casa env create analysis")
        assert code == 0 and str(made) in out, out
    finally:
        term.close()
    try:
        hub.admin.stop("tcalice")
        page = browser.session.get(f"{hub.base}/hub/spawn/tcalice").text
        offered = re.findall(r'<option value="([^"]+)"', page)
        assert offered == ["default", "analysis", "facility"], page[-2000:]
        started = browser.session.post(
            f"{hub.base}/hub/spawn/tcalice",
            data={
                "env": "analysis",
                "_xsrf": next(
                    c.value
                    for c in browser.session.cookies
                    if c.name == "_xsrf" and c.path.startswith("/hub")
                ),
            },
        )
        assert started.status_code == 200, started.text[-500:]
        deadline = time.time() + 120
        while not (hub.admin.api("GET", "/users/tcalice").json()["servers"].get("") or {}).get(
            "ready"
        ):
            assert time.time() < deadline, "the server started from the page never became ready"
            time.sleep(0.5)
        kernel = Kernel(hub.base, "tcalice", hub.admin.user_token("tcalice"))
        try:
            out = kernel.execute(
                "import sys, dask; print(sys.prefix); "
                "print(dask.config.get('gateway.cluster.options.python_env'))"
            )
            assert out["error"] is None, out["error"]
            assert out["stdout"].split() == [str(made), str(made)], out
        finally:
            kernel.close()

        hub.admin.stop("tcalice")
        hub.admin.spawn("tcalice", options={"env": "facility"})
        kernel = Kernel(hub.base, "tcalice", hub.admin.user_token("tcalice"))
        try:
            out = kernel.execute("import sys; print(sys.prefix)")
            assert out["stdout"].strip() == str(user_env_prefix(hub.ctx())), out
        finally:
            kernel.close()

        # The hub remembers the last choice; once that environment is gone, the server
        # starts from 'default' (the user is not kept out); a name that cannot be one is
        # refused.
        hub.admin.stop("tcalice")
        hub.admin.spawn("tcalice", options={"env": "analysis"})
        hub.admin.stop("tcalice")
        shutil.rmtree(made)
        hub.admin.spawn("tcalice")
        kernel = Kernel(hub.base, "tcalice", hub.admin.user_token("tcalice"))
        try:
            out = kernel.execute("import sys; print(sys.prefix)")
            assert out["stdout"].strip() == str(home / ".casa" / "envs" / "default"), out
        finally:
            kernel.close()
        hub.admin.stop("tcalice")
        refused = hub.admin.api("POST", "/users/tcalice/server", json={"env": "../../etc"})
        assert refused.status_code >= 400
        status = {s["name"]: s for s in json.loads(hub.casa("status", "--json").stdout)}
        assert "'../../etc' cannot name an environment" in status["hub"]["detail"], status
    finally:
        hub.admin.stop("tcalice")
        shutil.rmtree(made, ignore_errors=True)
        hub.admin.spawn("tcalice", options={"env": "default"})


def test_down_after_a_killed_hub_stops_its_proxy(hub):
    """JupyterHub starts configurable-http-proxy in a session of its own: a hub killed with
    SIGKILL leaves it running, and casa down must stop it too. (Runs last: it stops the hub.)"""
    import signal

    proxy_pid = int((hub.home / "services" / "hub" / "proxy.pid").read_text())
    assert b"configurable-http-proxy" in Path(f"/proc/{proxy_pid}/cmdline").read_bytes()
    hub_pid = json.loads((hub.home / "services" / "hub" / "hub.pid").read_text())["pid"]
    os.kill(hub_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(hub_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(hub_pid)
    assert _alive(proxy_pid), "the proxy went with the hub: nothing to test"
    down = hub.casa("down")
    assert down.returncode == 0, down.stderr
    assert "hub" in down.stdout
    deadline = time.monotonic() + 10
    while _alive(proxy_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(proxy_pid), "casa down left the hub's proxy running"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
