"""The facility as an attacker meets it: a real facility, real accounts whose names are
prefixes of one another, every attack the project guards against, and a count of what got
through that should have been refused. Each test fails unless its count is 0.

Every facility user has a shell on the host (the lab's terminal), so each other account is a
possible attacker: ``ata`` attacks ``atab`` (whose name begins with ``ata``'s) and the public
datasets ``pu`` and ``pub``. What the attacks are and which guarantee each checks is listed in
docs/facility.md ("Who can read, see and stop what").
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from XRootD import client as xrd

from accounts import needs_xrootd_and_root, remove_unix_account
from casa.generate.generator import generate_dataset

pytestmark = needs_xrootd_and_root("create the attackers' accounts")

ATTACKER, VICTIM = "ata", "atab"
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class Ledger:
    """Attacks tried, and the ones that got through."""

    tried: list[str] = field(default_factory=list)
    through: list[str] = field(default_factory=list)

    def refused(self, attack: str, was_refused: bool, detail: str = "") -> None:
        """Record one attack: ``was_refused`` says whether the facility refused it."""
        self.tried.append(attack)
        if not was_refused:
            self.through.append(f"{attack}{': ' + detail if detail else ''}")

    def check(self) -> None:
        """Fail, listing them, unless nothing got through."""
        print(f"{len(self.tried)} attacks tried, {len(self.through)} got through")
        assert self.tried, "no attack was tried"
        assert not self.through, (
            f"{len(self.through)} of {len(self.tried)} attacks got through:\n  "
            + "\n  ".join(self.through)
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A facility as root, clusters under each user's own account, two users, four datasets:
    ``pu`` and ``pub`` public, ``ata-own`` and ``atab-own`` private."""
    from conftest import new_facility_home, stop_everything

    f = new_facility_home('[gateway]\nbackend = "local-accounts"\n')
    for name in (ATTACKER, VICTIM):
        remove_unix_account(name)
        p = f.casa("user", "add", name, "--password-stdin", input_text=f"{name}-password")
        assert p.returncode == 0, p.stderr
    data = tmp_path_factory.mktemp("attack-data")
    generate_dataset(data, 8_000, 2, seed=5, workers=1)
    os.chmod(data, 0o755)
    for name, extra in (("pu", []), ("pub", []), ("ata-own", ["--user", ATTACKER]),
                        ("atab-own", ["--user", VICTIM])):  # fmt: skip
        f.casa("datasets", "add", name, data, "--store", *extra, check=True)
    f.supervisor().up()
    f.data = data
    yield f
    f.supervisor().down()
    stop_everything(f.home)
    for name in (ATTACKER, VICTIM):
        remove_unix_account(name)


def _urls(site, dataset: str) -> list[str]:
    shown = json.loads(site.casa("datasets", "show", dataset, "--json", check=True).stdout)
    return [f["url"] for f in shown["files"]]


def _on_server(url: str, port: int, path: str | None = None) -> str:
    """``url`` pointed at another XRootD server (the origin) and, optionally, another path."""
    parts = urlsplit(url)
    return f"root://{parts.hostname}:{port}/{path if path is not None else parts.path}"


def _reads(url: str, token: str | None) -> bool:
    """Whether XRootD hands out the first bytes of ``url`` with ``token``."""
    full = url if token is None else f"{url}?authz=Bearer%20{token}"
    f = xrd.File()
    status, _ = f.open(full, timeout=10)
    if not status.ok:
        return False
    status, data = f.read(0, 4, timeout=10)
    f.close()
    return status.ok and data == b"root"


def _sign(site, claims: dict, algorithm: str = "ES256", key=None) -> str:
    """A token with exactly ``claims``, signed with the facility's key unless ``key`` is given."""
    import jwt

    if key is None:
        key = (site.home / "keys" / "issuer.pem").read_bytes()
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": "casa-1", "typ": "JWT"})


def _claims(site, **changes) -> dict:
    now = int(time.time())
    claims = {
        "wlcg.ver": "1.0", "iss": site.ctx().config.issuer_url, "sub": ATTACKER,
        "aud": site.ctx().config.facility.name, "iat": now, "nbf": now, "exp": now + 600,
        "jti": f"attack-{now}", "scope": f"storage.read:/store/data storage.read:/store/user/{VICTIM}",
    }  # fmt: skip
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_storage_refuses_every_forged_or_misused_token(site):
    """Tokens an attacker can make or obtain read nothing of atab's, on the cache or the origin."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ledger = Ledger()
    good = _sign(site, _claims(site))  # atab's area, signed by the facility: the control
    header, payload, signature = good.split(".")
    public_pem = (site.home / "keys" / "issuer.pub.pem").read_bytes()
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "==="))
    tampered_claims["scope"] = "storage.read:/store"
    hs256 = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "casa-1"}).encode())
    hs256_body = _b64(json.dumps(_claims(site)).encode())
    import hashlib
    import hmac

    hs256_sig = _b64(
        hmac.new(public_pem, f"{hs256}.{hs256_body}".encode(), hashlib.sha256).digest()
    )
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    now = int(time.time())
    tokens = {
        "no token": None,
        "signed by another key": _sign(site, _claims(site), key=ec.generate_private_key(ec.SECP256R1())),
        "unsigned (alg none)": f"{none_header}.{payload}.",
        "HS256 with the public key as secret": f"{hs256}.{hs256_body}.{hs256_sig}",
        "tampered payload": f"{header}.{_b64(json.dumps(tampered_claims).encode())}.{signature}",
        "truncated signature": f"{header}.{payload}.{signature[:20]}",
        "expired": _sign(site, _claims(site, iat=now - 700, nbf=now - 700, exp=now - 60)),
        "not yet valid": _sign(site, _claims(site, nbf=now + 3600, exp=now + 7200)),
        "another issuer": _sign(site, _claims(site, iss="https://evil.example")),
        "another audience": _sign(site, _claims(site, aud="other-facility")),
        "a gateway token": _sign(site, _claims(site, aud=f"{site.ctx().config.facility.name}-gateway")),
        "write-only scope": _sign(site, _claims(site, scope=f"storage.create:/store/user/{VICTIM}")),
    }  # fmt: skip
    victim = _urls(site, "atab-own")[0]
    for server, port in (("cache", site.ports["cache"]), ("origin", site.ports["origin"])):
        url = _on_server(victim, port)
        for name, token in tokens.items():
            ledger.refused(f"{name} on the {server}", not _reads(url, token))
    # The control: the same claims, properly signed, do read (else every refusal above is moot).
    assert _reads(victim, good) and _reads(_on_server(victim, site.ports["origin"]), good)
    ledger.check()


def test_a_users_token_reads_nothing_of_a_user_whose_name_it_begins(site):
    """ata's own token: atab's files refused on both servers, also through relative paths; a
    dataset scope for ``pu`` does not read ``pub``."""
    ledger = Ledger()
    own = site.token("--user", ATTACKER)
    victim_urls = _urls(site, "atab-own")
    mine = urlsplit(_urls(site, "ata-own")[0]).path
    theirs = urlsplit(victim_urls[0]).path
    # /store/user/<ata's area>/../<atab's area>/file
    my_area = posixpath.dirname(posixpath.dirname(mine))
    trick = f"{my_area}/../{posixpath.relpath(theirs, posixpath.dirname(my_area))}"
    for server, port in (("cache", site.ports["cache"]), ("origin", site.ports["origin"])):
        for url in victim_urls:
            ledger.refused(f"ata's token on atab's {url.rsplit('/', 1)[1]} ({server})",
                           not _reads(_on_server(url, port), own))  # fmt: skip
        ledger.refused(f"ata's token through {trick} ({server})",
                       not _reads(_on_server(victim_urls[0], port, trick), own))  # fmt: skip
    assert _reads(_urls(site, "ata-own")[0], own), "ata must still read her own data"
    assert _reads(_urls(site, "pub")[0], own), "and public data"

    narrow = site.token("--user", ATTACKER, "--scope", "storage.read:/store/data/pu")
    assert _reads(_urls(site, "pu")[0], narrow), "a token for dataset pu reads pu"
    for server, port in (("cache", site.ports["cache"]), ("origin", site.ports["origin"])):
        ledger.refused(f"a token for /store/data/pu on pub ({server})",
                       not _reads(_on_server(_urls(site, "pub")[0], port), narrow))  # fmt: skip
    ledger.check()


def _issuer_exchange(site, lines: list[bytes], as_user: str) -> list[dict | None]:
    """Send each raw request line on its own connection as ``as_user``; the answers (None:
    no answer within 5 s)."""
    code = (
        "import json, socket, sys, time\n"
        "out = []\n"
        "for line in json.load(sys.stdin):\n"
        "    deadline = time.monotonic() + 5\n"
        "    while True:\n"
        "        s = socket.socket(socket.AF_UNIX); s.settimeout(5)\n"
        "        try:\n"
        "            s.connect(sys.argv[1]); break\n"
        "        except BlockingIOError:  # a full queue: casa's own client waits too\n"
        "            s.close()\n"
        "            if time.monotonic() > deadline: raise\n"
        "            time.sleep(0.05)\n"
        "    s.sendall(line.encode('latin-1'))\n"
        "    try:\n"
        "        out.append(json.loads(s.makefile().readline() or 'null'))\n"
        "    except (OSError, ValueError):\n"
        "        out.append(None)\n"
        "    s.close()\n"
        "print(json.dumps(out))\n"
    )
    sock = site.home / "services" / "issuer" / "issuer.sock"
    p = subprocess.run(
        ["runuser", "-u", as_user, "--", SYSTEM_PYTHON, "-c", code, str(sock)],
        input=json.dumps([line.decode("latin-1") for line in lines]),
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_the_issuer_gives_an_account_nothing_beyond_its_own_tokens(site):
    """Other users' tokens, extra scopes, other users' gateway tokens, malformed requests."""
    ledger = Ledger()
    asks = {
        "atab's data token": {"user": VICTIM},
        "atab's gateway token": {"user": VICTIM, "kind": "gateway"},
        "a scope over all of /store": {"scopes": ["storage.read:/store"]},
        "a scope over atab's area": {"scopes": [f"storage.read:/store/user/{VICTIM}"]},
        "write access to its own area": {"scopes": [f"storage.modify:/store/user/{ATTACKER}"]},
        "a token for a year": {"lifetime": 365 * 24 * 3600},
    }
    malformed = {
        "an empty line": b"\n",
        "a line that is not JSON": b"hello issuer\n",
        "a JSON list": b"[1, 2]\n",
        "a user that is not a string": b'{"user": 5}\n',
        "a lifetime that is not a number": b'{"lifetime": "forever"}\n',
    }
    lines = [json.dumps(a).encode() + b"\n" for a in asks.values()] + list(malformed.values())
    answers = _issuer_exchange(site, lines, ATTACKER)
    for name, answer in zip(list(asks) + list(malformed), answers, strict=True):
        refused = isinstance(answer, dict) and "error" in answer and "token" not in answer
        ledger.refused(f"ata asked the issuer for {name}", refused, json.dumps(answer)[:200])
    ledger.check()


def test_a_flood_of_connections_does_not_stall_the_issuer_for_others(site):
    """ata holds thousands of idle connections; atab still gets tokens at once."""
    ledger = Ledger()
    flood = (
        "import resource, socket, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n"
        "held = []\n"
        "for _ in range(3000):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(sys.argv[1]); held.append(s)\n"
        "    except OSError:\n"
        "        s.close()\n"
        "print(len(held), flush=True)\n"
        "time.sleep(30)\n"
    )
    sock = site.home / "services" / "issuer" / "issuer.sock"

    def raise_fd_limit():
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))

    attacker = subprocess.Popen(
        ["runuser", "-u", ATTACKER, "--", SYSTEM_PYTHON, "-c", flood, str(sock)],
        stdout=subprocess.PIPE, text=True, cwd="/", preexec_fn=raise_fd_limit,
    )  # fmt: skip
    try:
        attacker.stdout.readline()  # the connections are open (or refused) now
        start = time.monotonic()
        answers = _issuer_exchange(site, [b'{"user": null, "kind": "data"}\n'] * 3, VICTIM)
        waited = time.monotonic() - start
        served = all(isinstance(a, dict) and "token" in a for a in answers)
        ledger.refused("holding 3000 connections stalls other users' token requests",
                       served and waited < 10, f"served={served}, {waited:.1f} s")  # fmt: skip
    finally:
        attacker.kill()
        attacker.wait()
    log = (site.home / "services" / "issuer" / "issuer.log").read_text()
    ledger.refused("the flood fills the issuer's log with tracebacks", "Traceback" not in log)
    ledger.check()


def _gateway_token(site, user: str) -> str:

    return site.ctx().request_token(user=user, kind="gateway")


def _api(site, method: str, path: str, token: str | None, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://127.0.0.1:{site.ports['gateway']}{path}"
    r = requests.request(method, url, headers=headers, json=body, timeout=30, allow_redirects=False)
    return r.status_code


@pytest.fixture(scope="module")
def victim_cluster(site):
    """atab's running gateway cluster with one worker (run under atab's account)."""
    from casa.compute.gateway import gateway_client

    gateway = gateway_client(site.ctx(), _gateway_token(site, VICTIM))
    cluster = gateway.new_cluster()
    cluster.scale(1)
    dask_client = cluster.get_client()
    dask_client.wait_for_workers(1, timeout=120)
    yield cluster
    dask_client.close()
    cluster.shutdown()
    gateway.close()


def _listening_ports_of(user: str) -> list[int]:
    """TCP ports that processes of ``user`` listen on."""
    import psutil

    uid = int(subprocess.check_output(["id", "-u", user], text=True))
    ports = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.pid is None:
            continue
        try:
            if psutil.Process(conn.pid).uids().real == uid:
                ports.add(conn.laddr.port)
        except psutil.NoSuchProcess:
            pass
    return sorted(ports)


def _http_status_as(user: str, url: str) -> int | None:
    """The HTTP status ``user``'s own process gets for ``url`` (None: no HTTP answer)."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except Exception:\n"
        "    print('none')\n"
    )
    p = subprocess.run(["runuser", "-u", user, "--", SYSTEM_PYTHON, "-c", code, url],
                       capture_output=True, text=True, timeout=30, cwd="/")  # fmt: skip
    out = p.stdout.strip()
    return int(out) if out.isdigit() else None


def test_no_one_drives_or_watches_another_users_cluster(site, victim_cluster):
    """The gateway's API, the cluster's TLS, the dashboards through the gateway and on the
    cluster's own loopback ports: ata gets nothing of atab's cluster."""
    ledger = Ledger()
    name = victim_cluster.name
    mine = _gateway_token(site, ATTACKER)
    data_token = site.token("--user", ATTACKER)
    for method, path, body in (("GET", f"/api/v1/clusters/{name}", None),
                               ("POST", f"/api/v1/clusters/{name}/scale", {"count": 3}),
                               ("POST", f"/api/v1/clusters/{name}/adapt", {"minimum": 0}),
                               ("DELETE", f"/api/v1/clusters/{name}", None)):  # fmt: skip
        for who, token in (("anyone", None), ("ata", mine), ("ata's data token", data_token)):
            status = _api(site, method, path, token, body)
            ledger.refused(f"{who}: {method} {path}", status in (401, 403, 404), str(status))
    listed = requests.get(f"http://127.0.0.1:{site.ports['gateway']}/api/v1/clusters/",
                          headers={"Authorization": f"Bearer {mine}"}, timeout=30).json()  # fmt: skip
    ledger.refused("ata's cluster list shows atab's cluster", name not in listed)

    for route in ("status", "json/identity.json", "info/main/logs.html", "metrics"):
        path = f"/clusters/{name}/{route}"
        for who, token in (("anyone", None), ("ata", mine)):
            status = _api(site, "GET", path, token)
            ledger.refused(f"{who}: GET {path} through the gateway", status != 200, str(status))
    ports = _listening_ports_of(VICTIM)
    assert ports, "atab's scheduler and worker listen somewhere"
    for port in ports:
        for route in ("status", "json/identity.json", "metrics"):
            status = _http_status_as(ATTACKER, f"http://127.0.0.1:{port}/{route}")
            ledger.refused(f"ata: GET :{port}/{route} of atab's scheduler or worker",
                           status != 200, str(status))  # fmt: skip
        ledger.refused(f"ata: a TLS session without atab's certificate on :{port}",
                       not _tls_session_answers(port))  # fmt: skip
    ledger.check()


def _tls_session_answers(port: int) -> bool:
    """Whether a TLS client without a certificate gets any bytes from ``port`` (a Dask
    scheduler or worker speaks first once a session is up)."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                return bool(tls.recv(16))
    except (OSError, ssl.SSLError):
        return False


@pytest.fixture(scope="module")
def victim_server(site):
    """atab's JupyterLab server, spawned by the hub under atab's account."""
    from casa.services.hub.config import hub_api_token
    from hub_client import HubAdmin

    base = f"http://127.0.0.1:{site.ports['hub']}"
    admin = HubAdmin(base, hub_api_token(site.ctx()))
    admin.spawn(VICTIM)
    yield base
    admin.stop(VICTIM)


def test_the_hub_keeps_users_apart(site, victim_server):
    """ata, logged in, reaches neither atab's server nor the hub's admin API."""
    from hub_client import HubClient

    ledger = Ledger()
    ata = HubClient(victim_server)
    assert ata.login(ATTACKER, f"{ATTACKER}-password").status_code == 200
    for path in (f"/user/{VICTIM}/api/status", f"/user/{VICTIM}/lab",
                 f"/user/{VICTIM}/api/contents", "/hub/api/users"):  # fmt: skip
        r = ata.session.get(f"{victim_server}{path}", allow_redirects=True, timeout=30)
        # The hub's API may answer a user's own model; atab's must not be in it.
        shown = (
            f'"{VICTIM}"' in r.text if path.startswith("/hub/api/") else f"/user/{VICTIM}/" in r.url
        )
        reached = r.status_code == 200 and shown
        ledger.refused(f"ata, logged in: GET {path}", not reached, f"{r.status_code} {r.url}")
    intruder = HubClient(victim_server)
    r = intruder.login(VICTIM, f"{ATTACKER}-password")
    ledger.refused("logging in as atab with ata's password", "/hub/login" in r.url, r.url)
    ledger.check()


def test_nothing_of_the_facility_is_readable_that_is_not_meant_to_be(
    site, victim_cluster, victim_server
):
    """After a multi-user run: every file and folder ata can read under $CASA_HOME is public
    on purpose (listed, with the reason, in docs/facility.md)."""
    ledger = Ledger()
    public = {
        site.home / "casa.toml": "the configuration: no secrets, every user's casa reads it",
        site.home / "keys" / "issuer.pub.pem": "the issuer's public key",
        site.home / "certificates": "the facility's CA certificate, which clients verify with",
        site.home / "services" / "issuer" / "issuer.sock": "anyone may ask for their own token",
        site.home / "services" / "hub" / "catalog.json": "the public datasets, for notebooks",
        site.home / "services" / "hub" / "catalogs" / f"{ATTACKER}.json": "ata's own catalog",
        site.home / "services" / "hub" / "datasets.json": "the public datasets in full",
        site.home / "services" / "hub" / "catalogs" / "details" / f"{ATTACKER}.json": (
            "ata's own datasets in full, for ata's casa"
        ),
        site.home / "services" / "hub" / "terminal.bashrc": "every lab terminal's start-up",
        site.home / "services" / "hub" / "jupyter-config": "JupyterLab settings for every user",
    }
    logs = site.home / "services" / "gateway" / "logs"
    public.update({logs: "passable only (0711)", logs / ATTACKER: "passable only (0711)"})
    public.update({p: "ata's own clusters' logs" for p in (logs / ATTACKER).rglob("*")})
    # PIDs and start times, which ps shows anyone anyway: users' 'casa status' reads them.
    public.update({pid: "a service's PID" for pid in site.home.glob("services/*/*.pid")})
    victim_home = Path(os.path.expanduser(f"~{VICTIM}"))
    # Every path, found as root: an attacker guesses names even where it cannot list them.
    paths = [site.home, victim_home]
    for top in (site.home, victim_home):
        for folder, dirs, files in os.walk(top):
            paths += [Path(folder, name) for name in dirs + files]
    check = (
        "import json, os, sys\n"
        "print(json.dumps([p for p in json.load(sys.stdin) if os.access(p, os.R_OK)]))\n"
    )
    p = subprocess.run(
        ["runuser", "-u", ATTACKER, "--", SYSTEM_PYTHON, "-c", check],
        input=json.dumps([str(q) for q in paths]), capture_output=True, text=True,
        timeout=120, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    readable = set(json.loads(p.stdout))
    for path in paths:
        meant = any(path == q or q in path.parents for q in public)
        ledger.refused(f"ata reads {path}", str(path) not in readable or meant)
    ledger.check()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
