"""What the services write is readable only by whom it is for (issue 13, item 3).

A facility started as root with clusters under each user's own account and the hub; two real
accounts whose names are prefixes of each other each store or read data, run a gateway
cluster job, and one has a notebook server. Then every file and folder under ``$CASA_HOME``,
in the users' homes and in the scratch folders is tried as each account, with that account's
real permissions: whatever it can read or enter that is neither its own nor public by design
is listed, and the list must be empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from accounts import needs_xrootd_and_root, remove_unix_account
from casa.data.catalog import DatasetCatalog
from casa.generate.generator import generate_dataset
from casa.services.hub.config import hub_api_token
from hub_client import HubAdmin

pytestmark = needs_xrootd_and_root("create the users' Unix accounts")

#: ``fma`` is a prefix of ``fmab``: a check by name prefix would mix them up.
USERS = {"fma": "fma-password-1", "fmab": "fmab-password-1"}
USER_ENV = Path("/opt/casa-user-env/bin")

#: Relative to $CASA_HOME: what any account may open, and why.
PUBLIC_FILES = {
    "casa.toml": "written by the admin; users' casa commands read it",
    "services/issuer/issuer.sock": "anyone may ask for their own token",
    "services/hub/catalog.json": "the public datasets, for notebooks",
    "services/hub/datasets.json": "the public datasets in full, for users' casa commands",
    "services/hub/terminal.bashrc": "the start-up of every user's lab terminal",
    "services/hub/jupyter-config": "JupyterLab settings for every user (no secrets)",
    "services/hub/jupyter-config/labconfig": "JupyterLab settings for every user",
    "services/hub/jupyter-config/labconfig/default_setting_overrides.json": "the settings",
    "services/hub/jupyter-config/labconfig/page_config.json": "the lab's title (the facility's name)",
    "certificates": "the facility's CA folder, which clients verify the XRootD servers with",
}
#: Folders any account may pass through (but not list) to reach the files above, its own
#: cluster's folder and its own catalog (services/hub/catalogs/NAME.json, NAME's, 0600).
PASSABLE = {"", "services", "services/gateway/clusters", "services/hub/catalogs",
            "services/hub/catalogs/details"}  # fmt: skip

#: Tried as each account: the paths it may read (files) or read or enter (folders).
ACCESS_CHECK = """
import json, os, sys
readable = []
for path in json.load(sys.stdin):
    if os.path.isdir(path):
        if os.access(path, os.R_OK) or os.access(path, os.X_OK):
            readable.append(path)
    elif os.access(path, os.R_OK):
        readable.append(path)
print(json.dumps(readable))
"""


def _as_user(name: str, *cmd: str, input_text: str | None = None, env: dict | None = None):
    home = pwd.getpwnam(name).pw_dir
    settings = [f"{k}={v}" for k, v in {"HOME": home, **(env or {})}.items()]
    return subprocess.run(
        ["runuser", "-u", name, "--", "env", *settings, *cmd], input=input_text,
        capture_output=True, text=True, cwd=home, timeout=300,
    )  # fmt: skip


def _scratch_in_tmp(uid: int) -> list[Path]:
    """Dask's default scratch folders of ``uid`` in /tmp (any account could make one first)."""
    return [p for p in Path("/tmp").glob("dask-scratch-space*") if p.stat().st_uid == uid]


@pytest.fixture(scope="module")
def used(tmp_path_factory):
    """A facility two users have used: private data stored and read, clusters, a notebook."""
    from conftest import new_facility_home, stop_everything

    f = new_facility_home('[gateway]\nbackend = "local-accounts"\n')
    for name in USERS:
        remove_unix_account(name)
    try:
        for name, password in USERS.items():
            f.casa("user", "add", name, "--password-stdin", input_text=password, check=True)
            for stale in _scratch_in_tmp(pwd.getpwnam(name).pw_uid):  # a reused uid's
                shutil.rmtree(stale, ignore_errors=True)
        data = tmp_path_factory.mktemp("file-modes-data")
        generate_dataset(data, 20_000, 1, seed=13, workers=1)
        f.casa("datasets", "add", "fmabs", data, "--store", "--user", "fmab", check=True)
        f.casa("datasets", "add", "fmpub", data, "--store", check=True)
        up = f.casa("up")
        assert up.returncode == 0, up.stdout + up.stderr
        for name in USERS:
            _use_the_facility(f, name, data / "events_0000.root")
        f.admin = HubAdmin(f"http://127.0.0.1:{f.ports['hub']}", hub_api_token(f.ctx()))
        for name in USERS:
            f.admin.spawn(name)
        yield f
    finally:
        f.casa("down")
        stop_everything(f.home)
        for name in USERS:
            with contextlib.suppress(KeyError):
                for stale in _scratch_in_tmp(pwd.getpwnam(name).pw_uid):
                    shutil.rmtree(stale, ignore_errors=True)
            remove_unix_account(name)


#: Run as a user: start their gateway cluster with one worker that reads their file, and
#: leave the cluster running (its working directory holds its scratch space).
CLUSTER_JOB = """
import sys
from dask_gateway import Gateway
from dask_gateway.auth import GatewayAuth

class Bearer(GatewayAuth):
    def pre_request(self, resp):
        return {"Authorization": "Bearer " + open(sys.argv[3]).read().strip()}, None

gateway = Gateway(sys.argv[1], proxy_address=sys.argv[2], auth=Bearer())
cluster = gateway.new_cluster(shutdown_on_close=False)
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=120)

def entries(path):
    import uproot
    with uproot.open(path) as f:
        return f["Events"].num_entries

print("ENTRIES", client.submit(entries, sys.argv[4]).result())
client.close()
"""


def _use_the_facility(f, name: str, events: Path) -> None:
    """As ``name``: a job on their own gateway cluster, and fmab's private data through the
    cache (its copy and ``.cinfo`` there name fmab's private dataset)."""
    from casa.filesystem import write_file

    account = pwd.getpwnam(name)
    owner = (account.pw_uid, account.pw_gid)
    mine = Path(account.pw_dir) / "events.root"
    write_file(mine, events.read_bytes(), mode=0o600, owner=owner)
    ctx = f.ctx()
    tokens = {}
    for kind in ("data", "gateway"):
        tokens[kind] = Path(account.pw_dir) / f"{kind}_token"
        write_file(tokens[kind], ctx.request_token(user=name, kind=kind), owner=owner)
    g = ctx.config.gateway
    job = _as_user(
        name, str(USER_ENV / "python"), "-c", CLUSTER_JOB, f"http://127.0.0.1:{g.port}",
        f"gateway://127.0.0.1:{g.scheduler_port}", str(tokens["gateway"]), str(mine),
    )  # fmt: skip
    assert "ENTRIES 20000" in job.stdout, job.stdout + job.stderr
    if name == "fmab":
        catalog = DatasetCatalog(ctx.paths.database)
        url = catalog.get("fmabs").files[0].url
        catalog.close()
        token = tokens["data"].read_text().strip()
        copied = _as_user(name, "xrdcp", "-f", "-s", f"{url}?authz=Bearer%20{token}", "/dev/null")
        assert copied.returncode == 0, copied.stdout + copied.stderr


def _everything_written(f) -> list[Path]:
    """Every path under $CASA_HOME, the users' homes and the users' scratch folders in /tmp."""
    tops = [f.home]
    for name in USERS:
        account = pwd.getpwnam(name)
        tops += [Path(account.pw_dir), *_scratch_in_tmp(account.pw_uid)]
    found = []
    for top in tops:
        found.append(top)
        for root, dirs, files in os.walk(top):
            found += [Path(root) / n for n in dirs + files]
    return found


def _allowed(f, path: Path, uid: int) -> bool:
    """Whether the account ``uid`` may read ``path``: its own, or public by design."""
    relative = str(path.relative_to(f.home)) if path.is_relative_to(f.home) else None
    if relative == ".":
        relative = ""
    if relative is not None:
        parts = relative.split("/")
        if relative in PUBLIC_FILES or relative in PASSABLE:
            return True
        if parts[0] == "certificates":
            return True  # the CA certificate and its link by hash
        if len(parts) == 2 and parts[0] == "services":
            return True  # services/NAME: passable only (listing is checked apart)
        if parts[:3] == ["services", "gateway", "logs"] and len(parts) <= 4 and path.is_dir():
            return True  # logs/ and logs/USER/: root's, passable only (0711)
        if len(parts) == 3 and parts[0] == "services" and parts[2] == f"{parts[1]}.pid":
            return True  # read by any account's 'casa status': a PID, a port, a command
    try:
        return path.lstat().st_uid == uid
    except FileNotFoundError:
        return True  # gone since the walk (a temporary file)


def test_no_account_reads_what_the_services_wrote_for_another(used):
    paths = _everything_written(used)
    names = {str(p.relative_to(used.home)) for p in paths if p.is_relative_to(used.home)}
    # The walk covers what the attack found readable: a check of nothing cannot fail.
    for expected in ("services/gateway/gateway.log", "services/hub/jupyterhub.sqlite"):
        assert expected in names, f"{expected} was not written: nothing to check"
    assert any(n.endswith(".cinfo") and "fmab" in n for n in names), "the cache kept no copy"
    listed = json.dumps([str(p) for p in paths])
    leaks = []
    for name in USERS:
        uid = pwd.getpwnam(name).pw_uid
        checked = _as_user(name, str(USER_ENV / "python"), "-c", ACCESS_CHECK, input_text=listed)
        assert checked.returncode == 0, checked.stderr
        for path in map(Path, json.loads(checked.stdout)):
            if not _allowed(used, path, uid):
                leaks.append(f"{name} can read {path} ({_describe(path)})")
    assert not leaks, "\n".join(leaks)
    in_clusters = [p for p in paths if p.name == "dask-scratch-space" and "clusters" in p.parts]
    assert {p.stat().st_uid for p in in_clusters} == {pwd.getpwnam(n).pw_uid for n in USERS}, (
        "each user's cluster keeps its scratch space in its own working directory"
    )


def test_private_datasets_are_listed_for_their_owner_only(used):
    public = json.loads((used.home / "services" / "hub" / "catalog.json").read_text())
    assert set(public) == {"fmpub"}, "the catalog every account reads names a private dataset"
    for name, expected in (("fma", {"fmpub"}), ("fmab", {"fmpub", "fmabs"})):
        account = pwd.getpwnam(name)
        own = used.home / "services" / "hub" / "catalogs" / f"{name}.json"
        assert set(json.loads(own.read_text())) == expected, name
        details = used.home / "services" / "hub" / "catalogs" / "details" / f"{name}.json"
        assert {d["name"] for d in json.loads(details.read_text())} == expected, name
        for path in (own, details):
            info = path.stat()
            assert (info.st_uid, info.st_mode & 0o777) == (account.pw_uid, 0o600), path


def test_service_folders_can_be_passed_but_not_listed(used):
    services = used.home / "services"
    folders = [used.home, services, *sorted(services.iterdir()), services / "gateway/clusters",
               services / "hub/catalogs", services / "hub/catalogs/details"]  # fmt: skip
    listed = json.dumps([str(p) for p in folders if p.is_dir()])
    probe = (
        "import json, os, sys\n"
        "print(json.dumps([p for p in json.load(sys.stdin) if os.access(p, os.R_OK)]))"
    )
    for name in USERS:
        checked = _as_user(name, str(USER_ENV / "python"), "-c", probe, input_text=listed)
        assert json.loads(checked.stdout) == [], f"{name} may list {checked.stdout}"


def test_any_account_still_sees_the_facility_status(used):
    env = {"CASA_HOME": str(used.home)}
    status = _as_user("fmab", str(USER_ENV / "casa"), "status", "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    services = {s["name"]: s for s in json.loads(status.stdout)}
    assert all(s["running"] and s["healthy"] for s in services.values()), services


def test_xrootd_keeps_its_environment_file_to_itself(used):
    for name in ("origin", "cache"):
        own = used.home / "services" / name / "run" / f"xrootd.{name}.env"
        assert own.exists(), f"{name} wrote no environment file next to its PID file"
        shared = Path(f"/tmp/xrootd.{name}.env")  # where xrootd writes it without -s
        if shared.exists():
            assert str(used.home) not in shared.read_text(errors="replace")


def _describe(path: Path) -> str:
    info = path.lstat()
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return f"owner {owner}, mode {info.st_mode & 0o7777:04o}"


def test_up_closes_what_an_older_casa_left_readable(new_facility):
    f = new_facility()
    older = {
        "services/gateway/gateway.log": "cluster abc of fmab\n",
        "services/issuer/issuer.log": "uid 1000 asked for 'fmab'\n",
        "services/hub/spawn-failures.json": "{}",
        "services/origin/origin.cfg": "# old\n",
        "cache/store/user/fmq~/private~/events.root": "copy",
        "cache/store/user/fmq~/private~/events.root.cinfo": "info",
    }
    for relative, text in older.items():
        path = f.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for p in [path, *path.parents]:
            if p == f.home:
                break
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    up = f.casa("up")
    assert up.returncode == 0, up.stdout + up.stderr
    still_open = []
    for relative in older:
        path = f.home / relative
        for p in [path, *path.parents]:
            if p == f.home / "services" or p == f.home:
                break
            if not p.exists():
                continue  # the cache may drop a copy it cannot account for
            passable = p.is_dir() and p.parent == f.home / "services"
            if p.stat().st_mode & 0o007 and not (passable and p.stat().st_mode & 0o777 == 0o711):
                still_open.append(f"{p.relative_to(f.home)} ({_describe(p)})")
    assert not still_open, "\n".join(sorted(set(still_open)))
