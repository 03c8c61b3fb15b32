"""Users and datasets whose names are prefixes of each other, on the real servers.

Debian's XRootD 5.5.3 grants a scope to every path that starts with it, so these tests use
accounts ``rela`` and ``relab`` and public datasets ``pu`` and ``pub``: with a layout that
did not close names, each of the refused reads below would succeed (see FIELD-NOTES).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from XRootD import client

from accounts import needs_xrootd_and_root, remove_unix_account
from casa.data.catalog import DatasetCatalog
from casa.generate.generator import generate_dataset

pytestmark = needs_xrootd_and_root("create the users' Unix accounts")

USERS = ("rela", "relab")
USER_PYTHON = Path("/opt/casa-user-env/bin/python")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Issuer, origin, cache and gateway; rela and relab with a dataset each; pu and pub."""
    from casa.services.gateway.service import GatewayService
    from casa.services.issuer.service import IssuerService
    from casa.services.supervisor import Supervisor
    from casa.services.xrootd.service import CacheService, OriginService
    from conftest import new_facility_home, stop_everything

    f = new_facility_home()
    for name in USERS:
        remove_unix_account(name)
        f.casa("user", "add", name, "--password-stdin", input_text=f"{name}-password", check=True)
    f.supervisor_of = lambda services: Supervisor(f.ctx(), services)
    everything = f.supervisor_of([IssuerService(), OriginService(), CacheService(),
                                  GatewayService()])  # fmt: skip
    data = tmp_path_factory.mktemp("prefix-data")
    generate_dataset(data, 4_000, 2, seed=13, workers=1)
    f.data = data
    try:
        everything.up()
        first = data / "events_0000.root"
        for name in USERS:
            f.casa("datasets", "add", f"{name}-own", first, "--store", "--user", name, check=True)
        for name in ("pu", "pub"):
            f.casa("datasets", "add", name, first, "--store", check=True)
        yield f
    finally:
        everything.down()
        stop_everything(f.home)
        for name in USERS:
            remove_unix_account(name)


def _url(site, dataset: str, server: str = "cache") -> str:
    shown = json.loads(site.casa("datasets", "show", dataset, "--json", check=True).stdout)
    url = shown["files"][0]["url"]
    return url.replace(f":{site.ports['cache']}/", f":{site.ports[server]}/")


def _xrootd_read(url: str, token: str) -> bytes | None:
    f = client.File()
    status, _ = f.open(f"{url}?authz=Bearer%20{token}", timeout=10)
    if not status.ok:
        assert "[3010]" in status.message, status.message
        return None
    status, data = f.read(timeout=30)
    f.close()
    return data if status.ok else None


def _xrdcp(url: str, token: str, target: Path) -> bool:
    p = subprocess.run(["xrdcp", "-f", "-s", f"{url}?authz=Bearer%20{token}", str(target)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    return p.returncode == 0


def _uproot_entries(url: str, token: str) -> int | None:
    import uproot

    try:
        with uproot.open(f"{url}?authz=Bearer%20{token}", timeout=10) as f:
            return int(f["Events"].num_entries)
    except Exception as e:  # uproot wraps the server's refusal in several kinds
        assert "3010" in str(e) or "ermission" in str(e), e
        return None


def test_prefix_names_are_refused_on_both_servers_with_every_client(site, tmp_path):
    """rela's token reads neither relab's data nor pub with a scope of pu, on cache and origin,
    with the XRootD client, xrdcp and uproot; what each may read still reads."""
    rela = site.token("--user", "rela")
    pu = site.token("--scope", "storage.read:/store/data/pu")
    cases = [  # (token name, token, dataset, may read)
        ("rela", rela, "rela-own", True), ("rela", rela, "pu", True),
        ("rela", rela, "relab-own", False),
        ("pu", pu, "pu", True), ("pu", pu, "pub", False), ("pu", pu, "rela-own", False),
    ]  # fmt: skip
    wrong = []
    for server in ("cache", "origin"):
        for who, token, dataset, allowed in cases:
            url = _url(site, dataset, server)
            got = {
                "xrootd": _xrootd_read(url, token) is not None,
                "xrdcp": _xrdcp(url, token, tmp_path / "copy.root"),
                "uproot": _uproot_entries(url, token) is not None,
            }
            wrong += [f"{who} {how} {dataset} on the {server}: {'read' if read else 'refused'}"
                      for how, read in got.items() if read != allowed]  # fmt: skip
    assert wrong == []


def test_issuer_closes_scopes_and_refuses_others_areas(site):
    """Any scope a privileged caller names is closed; rela cannot ask for relab's area."""
    from casa.auth.tokens import unverified_claims

    token = site.token("--user", "rela", "--scope", "storage.read:/store/user/relab/relab-own")
    assert unverified_claims(token)["scope"] == "storage.read:/store/user/relab~/relab-own~"
    refused = site.casa("token", "issue", "--print", "--scope", "storage.read:/store/data/pu/x")
    assert refused.returncode == 6 and "names a file" in refused.stderr
    p = _as_user("rela", ["-m", "casa", "token", "issue", "--print", "--scope",
                          "storage.read:/store/user/relab"], site)  # fmt: skip
    assert p.returncode == 6 and "rela may not ask for the scopes" in p.stderr, p.stderr
    assert "storage.read:/store/user/relab~" in p.stderr


def _as_user(name: str, args: list[str], site, **env) -> subprocess.CompletedProcess:
    """``python ARGS`` from the users' environment, run as the Unix account ``name``."""
    home = f"/home/{name}"
    variables = {"HOME": home, "CASA_HOME": str(site.home), "PATH": "/usr/bin:/bin",
                 "NO_COLOR": "1", "COLUMNS": "200", **env}  # fmt: skip
    return subprocess.run(
        ["runuser", "-u", name, "--", "env", "-i", *(f"{k}={v}" for k, v in variables.items()),
         str(USER_PYTHON), *args],
        capture_output=True, text=True, cwd="/", timeout=300,
    )  # fmt: skip


GATEWAY_RUN = textwrap.dedent(
    """
    import json, sys
    from casa.analysis.registry import load_processor
    from casa.analysis.runner import run_analysis
    from casa.compute.gateway import GatewayBackend, Scaling
    from casa.data.files import FileInfo
    from casa.errors import CasaError
    from casa.facility import facility_context, refusal_explainer

    ctx = facility_context()
    backend = GatewayBackend(ctx, Scaling(workers=1), worker_memory=1.0)
    out = {}
    for name, spec in json.loads(sys.argv[1]).items():
        try:
            result = run_analysis(load_processor("dimuon"), name, [FileInfo(**spec)], backend,
                                  explain_refusal=refusal_explainer(ctx))
            out[name] = ["ok", result.events]
        except CasaError as e:
            out[name] = [type(e).__name__, str(e)]
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.skipif(not USER_PYTHON.exists(), reason="no users' environment (make user-env)")
def test_relas_gateway_cluster_cannot_read_relabs_data(site):
    """From rela's own account and gateway cluster (workers run as rela, with her token)."""
    home = Path("/home/rela")
    token_file = home / "bt_rela"
    token_file.write_text(site.token("--user", "rela") + "\n")
    shutil.chown(token_file, "rela", "rela")
    token_file.chmod(0o600)
    specs = {}
    for dataset in ("rela-own", "relab-own"):
        shown = json.loads(site.casa("datasets", "show", dataset, "--json", check=True).stdout)
        f = shown["files"][0]
        specs[dataset] = {"url": f["url"], "tree": f["tree"], "events": f["events"],
                          "bytes": f["bytes"]}  # fmt: skip
    p = _as_user("rela", ["-c", GATEWAY_RUN, json.dumps(specs)], site,
                 BEARER_TOKEN_FILE=str(token_file))  # fmt: skip
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, p.stdout + p.stderr
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["rela-own"] == ["ok", 2_000], out
    kind, message = out["relab-own"]
    assert kind == "DataError", out
    assert "(for 'rela') has no scope to read /store/user/relab~/relab-own~/" in message


def test_wrong_audience_refusals_through_casa_run(site, tmp_path):
    """The storage refuses a gateway token and another audience's token; casa says which."""
    from casa.auth.tokens import TokenIssuer, default_scopes

    ctx = site.ctx()
    gateway = ctx.request_token(user="rela", kind="gateway")
    other = TokenIssuer(ctx.paths.keys / "issuer.pem", ctx.config.issuer_url, "elsewhere")
    foreign = other.mint("rela", default_scopes("rela"), 600)
    expected = {
        gateway: f"is a gateway token (audience '{ctx.config.facility.name}-gateway'), not a "
        "data token",
        foreign: f"is for the audience 'elsewhere', not this facility's storage "
        f"('{ctx.config.facility.name}')",
    }
    for token, words in expected.items():
        p = site.casa("run", "dimuon", "--dataset", "pu", "--executor", "iterative",
                      "--out", tmp_path / "o", env={"BEARER_TOKEN": token})  # fmt: skip
        err = " ".join(p.stderr.split())
        assert p.returncode == 4 and words in err, err
        assert "looks valid" not in err


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_store_refuses_bad_and_unknown_users_and_changes_nothing(site):
    storage = site.home / "storage"
    before, catalog_before = _tree(storage), site.casa("datasets", "list", "--json").stdout
    for user, words in ((".." , "cannot name a folder in facility storage"),
                        ("", "cannot name a folder in facility storage"),
                        ("re/la", "cannot name a folder in facility storage"),
                        ("rela~", "cannot name a folder in facility storage"),
                        ("renobody", "there is no facility user of that name")):  # fmt: skip
        p = site.casa("datasets", "add", "bad", site.data / "events_0000.root", "--store",
                      "--user", user)  # fmt: skip
        err = " ".join(p.stderr.split())
        assert p.returncode == 2 and words in err, (user, err)
    assert "casa user add renobody" in err
    assert _tree(storage) == before
    assert site.casa("datasets", "list", "--json").stdout == catalog_before


def test_remove_deletes_stored_files_and_the_name_can_be_stored_again(site, tmp_path):
    """Also the cache's copy goes: the next dataset of that name reads its own bytes."""
    first, second = site.data / "events_0000.root", site.data / "events_0001.root"
    site.casa("datasets", "add", "again", first, "--store", "--user", "relab", check=True)
    relab = site.token("--user", "relab")
    assert _xrootd_read(_url(site, "again"), relab) == first.read_bytes()
    folder = site.home / "storage" / "store" / "user" / "relab~" / "again~"
    cached = site.home / "cache" / "store" / "user" / "relab~" / "again~"
    assert folder.is_dir() and cached.is_dir()
    p = site.casa("datasets", "remove", "again", check=True)
    assert "deleted its 1 file(s) from facility storage (/store/user/relab~/again~)" in p.stdout
    assert not folder.exists() and not cached.exists()
    assert not list(folder.parent.glob(".again~*")), "nothing set aside is left behind"
    site.casa("datasets", "add", "again", second, "--store", "--user", "relab", check=True)
    data = _xrootd_read(_url(site, "again"), relab)
    assert hashlib.sha256(data).digest() == hashlib.sha256(second.read_bytes()).digest()
    # Files registered where they are stay where they are.
    site.casa("datasets", "add", "local", first, check=True)
    p = site.casa("datasets", "remove", "local", check=True)
    assert "its files were left in place" in p.stdout and first.exists()


def test_casa_up_moves_old_storage_into_the_layout(site):
    """Storage and catalog as an older casa wrote them are renamed, not copied, at start."""
    from casa.services.xrootd.service import OriginService

    site.casa("datasets", "add", "legacy", site.data / "events_0001.root", "--store", check=True)
    storage = site.home / "storage" / "store" / "data"
    origin = site.supervisor_of([OriginService()])
    origin.down()
    os.rename(storage / "legacy~", storage / "legacy")
    catalog = DatasetCatalog(site.ctx().paths.database)
    assert catalog.rewrite_urls(lambda url: url.replace("/legacy~/", "/legacy/")) == 1
    catalog.close()
    origin.up()
    assert (storage / "legacy~" / "events_0001.root").exists() and not (storage / "legacy").exists()
    url = _url(site, "legacy")
    assert "/store/data/legacy~/events_0001.root" in url
    data = _xrootd_read(url, site.token())
    assert data == (site.data / "events_0001.root").read_bytes()
