"""Reading through the real XCache and origin, every read authorised by a bearer token."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pickle
import shutil

import numpy as np
import pytest
from XRootD import client

from casa.generate.generator import generate_dataset

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)


#: The facility user who owns 'alice-sim' (a Unix account under root, removed afterwards).
ALICE = "realice" if os.geteuid() == 0 else getpass.getuser()


@pytest.fixture(scope="module")
def stored(facility, tmp_path_factory):
    """A generated dataset copied into facility storage as 'sim', plus alice's own one."""
    import subprocess

    d = tmp_path_factory.mktemp("store-src")
    generate_dataset(d, 40_000, 4, seed=77, workers=1)
    facility.casa("datasets", "add", "sim", d, "--store", check=True)
    if os.geteuid() == 0:
        facility.casa("user", "add", ALICE, "--password-stdin", input_text="alice-password",
                      check=True)  # fmt: skip
    facility.casa("datasets", "add", "alice-sim", d / "events_0000.root", "--store",
                  "--user", ALICE, check=True)  # fmt: skip
    yield d
    if os.geteuid() == 0:
        subprocess.run(["userdel", "-r", ALICE], capture_output=True)


def _read_all(url: str, token: str | None) -> tuple[bool, bytes | str]:
    full = url if token is None else f"{url}?authz=Bearer%20{token}"
    f = client.File()
    status, _ = f.open(full, timeout=10)
    if not status.ok:
        return False, status.message
    status, data = f.read(timeout=30)
    f.close()
    return status.ok, data


def _urls(facility, name):
    shown = json.loads(facility.casa("datasets", "show", name, "--json", check=True).stdout)
    return [f["url"] for f in shown["files"]]


def test_bytes_through_the_cache_equal_the_file(facility, stored):
    token = facility.token()
    for url in _urls(facility, "sim"):
        ok, data = _read_all(url, token)
        assert ok, data
        original = (stored / url.rsplit("/", 1)[1]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(original).hexdigest()
    assert all(u.startswith(f"root://127.0.0.1:{facility.ports['cache']}//store/data/sim~/")
               for u in _urls(facility, "sim"))  # fmt: skip


def test_run_through_the_cache_equals_local_run(facility, stored, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(facility.token())
    env = {"BEARER_TOKEN_FILE": str(token_file)}
    facility.casa("run", "adl8", "--dataset", "sim", "--out", tmp_path / "remote",
                  "--executor", "futures", "--workers", "2", env=env, check=True)  # fmt: skip
    facility.casa("run", "adl8", "--files", stored, "--out", tmp_path / "local",
                  "--executor", "iterative", check=True)  # fmt: skip
    remote = pickle.loads((tmp_path / "remote" / "result.pkl").read_bytes())
    local = pickle.loads((tmp_path / "local" / "result.pkl").read_bytes())
    assert remote.keys() == local.keys()
    for name in local:
        assert np.array_equal(remote[name].values(flow=True), local[name].values(flow=True))
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["events"] == 40_000 and summary["bytes_read"] > 0


def test_refusals_each_have_their_own_message(facility, stored, tmp_path):
    url = _urls(facility, "sim")[0]
    alice_url = _urls(facility, "alice-sim")[0]
    expired = facility.token("--lifetime", "1")
    bob = facility.token("--user", "bob")
    import time

    time.sleep(2)
    # XRootD itself refuses each of these.
    for token, target in ((None, url), (expired, url), (bob, alice_url)):
        ok, message = _read_all(target, token)
        assert not ok and "[3010]" in message, message
    # A token signed by a key that is not the facility's.
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    claims = {"iss": facility.ctx().config.issuer_url, "sub": "eve", "aud": "casa",
              "exp": int(time.time()) + 600, "iat": int(time.time()),
              "scope": "storage.read:/store/data", "wlcg.ver": "1.0"}  # fmt: skip
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": "casa-1"})  # fmt: skip
    ok, message = _read_all(url, forged)
    assert not ok and "[3010]" in message

    # casa explains each refusal in words.
    def run(dataset, **env):
        p = facility.casa("run", "dimuon", "--dataset", dataset, "--out", tmp_path / "o",
                          "--executor", "iterative",
                          env={"BEARER_TOKEN": "", "BEARER_TOKEN_FILE": str(tmp_path / "none"), **env})  # fmt: skip
        assert p.returncode == 4, p.stderr
        return " ".join(p.stderr.split())

    err = run("sim")
    assert "needs a bearer token, and none was found" in err and "$BEARER_TOKEN_FILE" in err
    err = run("sim", BEARER_TOKEN=expired)
    assert "was refused" in err and "expired at" in err
    err = run("alice-sim", BEARER_TOKEN=bob)
    assert f"(for 'bob') has no scope to read /store/user/{ALICE}~/alice-sim~/events_0000" in err
    err = run("sim", BEARER_TOKEN=forged)
    assert "is not signed by this facility's issuer" in err
    assert "Bearer%20" not in err, "tokens must never be printed"


def test_owner_reads_own_area(facility, stored):
    alice = facility.token("--user", ALICE)
    ok, data = _read_all(_urls(facility, "alice-sim")[0], alice)
    assert ok and data[:4] == b"root"


def test_second_read_is_served_from_the_cache(facility, stored):
    facility.casa("datasets", "add", "fresh", stored / "events_0003.root", "--store", check=True)
    token = facility.token()
    url = _urls(facility, "fresh")[0]
    name = url.rsplit("/", 1)[1]
    cached = facility.home / "cache" / "store" / "data" / "fresh~" / name
    assert not cached.exists()
    assert _read_all(url, token)[0]
    assert cached.exists() and cached.with_name(name + ".cinfo").exists()
    # XCache writes its copy after serving the read: wait for it, a while under load.
    import time

    deadline = time.monotonic() + 30
    while cached.stat().st_size != (stored / name).stat().st_size and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cached.stat().st_size == (stored / name).stat().st_size
    assert _read_all(url, token)[0]


def test_token_issue_stores_a_private_file(facility, tmp_path):
    target = tmp_path / "bt"
    p = facility.casa("token", "issue", env={"BEARER_TOKEN_FILE": str(target)}, check=True)
    assert str(target) in p.stdout
    assert target.stat().st_mode & 0o777 == 0o600
    shown = json.loads(facility.casa("token", "show", "--json",
                                     env={"BEARER_TOKEN_FILE": str(target)}, check=True).stdout)  # fmt: skip
    assert shown["claims"]["scope"].split()[0] == "storage.read:/store/data"
    assert 0 < shown["seconds_left"] <= 12 * 3600
    assert set(shown["claims"]) >= {"iss", "sub", "aud", "exp", "iat", "jti", "scope"}


def test_issuer_gives_others_only_their_own_tokens(facility):
    """An unprivileged account (nobody) gets a token for itself, never for someone else."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another account")
    # The plain socket protocol, spoken by the system Python (nobody cannot read the venv).
    code = (
        "import json, socket, sys\n"
        "def ask(user):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "    s.sendall(json.dumps({'user': user}).encode() + b'\\n')\n"
        "    return json.loads(s.makefile().readline())\n"
        "import base64\n"
        "t = ask(None)['token'].split('.')[1]\n"
        "print(json.loads(base64.urlsafe_b64decode(t + '==='))['scope'])\n"
        "print('REFUSED', ask('alice')['error'])\n"
    )
    sock = facility.home / "services" / "issuer" / "issuer.sock"
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run as another account")

    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)

    p = subprocess.run(
        [python, "-c", code, str(sock)], capture_output=True, text=True,
        preexec_fn=as_nobody, cwd="/", env={**os.environ, "HOME": "/nonexistent"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "storage.read:/store/data storage.read:/store/user/nobody~"
    assert lines[1].startswith("REFUSED") and "nobody may get tokens for nobody only" in lines[1]


# -- standard tools, holding nothing but the token file (XRootD's ztn protocol) ----------

#: What plain uproot and ROOT report of each file named on the command line: its entries and
#: how many have two muons, or None. One process reads all files (ROOT takes seconds to import);
#: uproot and ROOT each in their own (their two XRootD clients crash when in one process).
UPROOT_COUNTS = """
import json, sys
import numpy, uproot
got = {}
for url in sys.argv[1:]:
    try:
        t = uproot.open(url)["Events"]
        got[url] = f"{t.num_entries} {int(numpy.sum(t['nMuon'].array(library='np') >= 2))}"
    except Exception:
        got[url] = None
print(json.dumps(got))
"""
ROOT_COUNTS = """
import json, sys
import ROOT
got = {}
for url in sys.argv[1:]:
    try:
        f = ROOT.TFile.Open(url)  # kept: the tree is read through it
    except OSError:  # refused
        got[url] = None
        continue
    t = f.Get("Events")
    got[url] = f"{t.GetEntries()} {t.GetEntries('nMuon >= 2')}"
    f.Close()
print(json.dumps(got))
"""


def _fresh_shell(tmp_path, token: str | None) -> dict[str, str]:
    """The environment of a new login shell: no casa, at most a token file (0600)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    if token is not None:
        path = tmp_path / f"bt-{hashlib.sha1(token.encode()).hexdigest()[:8]}"
        path.write_text(token + "\n")
        path.chmod(0o600)
        env["BEARER_TOKEN_FILE"] = str(path)
    return env


def _tools_read(urls: list[str], env: dict[str, str], tmp_path) -> dict[str, str | None]:
    """What xrdcp, plain uproot and ROOT each got from each URL (``"URL TOOL"``): the file's
    checksum (xrdcp) or counts, or None."""
    import subprocess
    import sys

    got: dict[str, str | None] = {}
    copy = tmp_path / "copy.root"
    for url in urls:
        copy.unlink(missing_ok=True)
        p = subprocess.run(["xrdcp", "-f", "-s", url, str(copy)], env=env, capture_output=True)
        ok = p.returncode == 0
        got[f"{url} xrdcp"] = hashlib.sha256(copy.read_bytes()).hexdigest() if ok else None
    for tool, code in (("uproot", UPROOT_COUNTS), ("ROOT", ROOT_COUNTS)):
        p = subprocess.run([sys.executable, "-c", code, *urls], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        counts = json.loads(p.stdout.strip().splitlines()[-1])
        got.update({f"{url} {tool}": value for url, value in counts.items()})
    return got


def _expected(url: str, path) -> dict[str, str]:
    import uproot

    n_muon = uproot.open(path)["Events"]["nMuon"].array(library="np")
    counts = f"{len(n_muon)} {int(np.sum(n_muon >= 2))}"
    return {f"{url} xrdcp": hashlib.sha256(path.read_bytes()).hexdigest(),
            f"{url} uproot": counts, f"{url} ROOT": counts}  # fmt: skip


def _on_origin(facility, url: str) -> str:
    return url.replace(f":{facility.ports['cache']}/", f":{facility.ports['origin']}/")


def test_standard_tools_read_with_only_the_token_file(facility, stored, tmp_path):
    """xrdcp, uproot and ROOT in a fresh shell that holds only $BEARER_TOKEN_FILE read the
    facility's data through the cache (a miss, then a hit) and from the origin; they need no
    casa code, no URL option and no X509_CERT_DIR (casa installed its CA where they look)."""
    facility.casa("datasets", "add", "plain", stored / "events_0001.root", "--store", check=True)
    url = _urls(facility, "plain")[0]
    cached = facility.home / "cache" / "store" / "data" / "plain~" / url.rsplit("/", 1)[1]
    assert not cached.exists()
    env = _fresh_shell(tmp_path, facility.token())
    # The first read is a miss: the cache reads the origin with its own token, the client's
    # URL having none; xrdcp reads first, uproot and ROOT then read the cache's copy.
    origin = _on_origin(facility, url)
    expected = {**_expected(url, stored / "events_0001.root"),
                **_expected(origin, stored / "events_0001.root")}  # fmt: skip
    assert _tools_read([url, origin], env, tmp_path) == expected
    assert cached.exists()
    own = _urls(facility, "alice-sim")[0]
    alice = _fresh_shell(tmp_path, facility.token("--user", ALICE))
    assert _tools_read([own], alice, tmp_path) == _expected(own, stored / "events_0000.root")


def test_standard_tools_are_refused_what_the_token_does_not_cover(facility, stored, tmp_path):
    """No token, an expired one, another user's (also one whose name is a prefix of the
    owner's), one scoped elsewhere, a forged one: every tool is refused, on the cache (with
    the file already in it) and on the origin."""
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    public = _urls(facility, "sim")[0]
    alices = _urls(facility, "alice-sim")[0]
    assert _read_all(alices, facility.token("--user", ALICE))[0]  # now in the cache too
    claims = {"iss": facility.ctx().config.issuer_url, "sub": ALICE, "aud": "casa",
              "exp": int(time.time()) + 600, "iat": int(time.time()),
              "scope": f"storage.read:/store/user/{ALICE}~", "wlcg.ver": "1.0"}  # fmt: skip
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": "casa-1"})  # fmt: skip
    expired = facility.token("--user", ALICE, "--lifetime", "1")
    attempts = {
        "no": (None, public),
        "an expired": (expired, alices),
        "another user's": (facility.token("--user", "bob"), alices),
        # realic's name is a prefix of realice's: a check by string prefix would let it in.
        "a prefix user's": (facility.token("--user", ALICE[:-1]), alices),
        "a public-data-only": (facility.token("--scope", "storage.read:/store/data"), alices),
        "a forged": (forged, alices),
    }
    time.sleep(1.5)
    got_through = []
    for what, (token, url) in attempts.items():
        got = _tools_read([url, _on_origin(facility, url)], _fresh_shell(tmp_path, token), tmp_path)
        got_through += [f"{key} with {what} token" for key, value in got.items() if value]
    assert got_through == []


def test_the_caches_own_token_reads_only_and_only_the_daemon_has_it(facility):
    """The token the cache presents to the origin for ztn clients: read-only, in a file of
    the XRootD account's alone."""
    import pwd

    from casa.auth.tokens import unverified_claims

    path = facility.home / "services" / "cache" / "origin.token"
    info = path.stat()
    assert info.st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert pwd.getpwuid(info.st_uid).pw_name == facility.ctx().config.xrootd.user
    claims = unverified_claims(path.read_text().strip())
    assert claims["scope"] == "storage.read:/store" and claims["sub"] == "casa-cache"


def test_casa_reader_asks_a_server_its_limits_once_and_closes_every_file(
    facility, stored, monkeypatch
):
    """coffea opens the file of every chunk: casa's reader asks the cache for its
    vector-read limits once per process (uproot asks on every open), with the same answer
    uproot gets, and closes each file without waiting for the answer, yet closes it."""
    import time

    import uproot
    import uproot.source.xrootd

    from casa.data import sources

    url = _urls(facility, "sim")[0]
    monkeypatch.setenv("BEARER_TOKEN", facility.token())
    monkeypatch.setattr(sources, "_SERVER_LIMITS", {})
    asked = []
    real = uproot.source.xrootd.get_server_config
    monkeypatch.setattr(uproot.source.xrootd, "get_server_config",
                        lambda f: asked.append(f) or real(f))  # fmt: skip
    options = sources.uproot_options_for([url])
    opened, arrays = [], []
    for _ in range(4):
        with uproot.open(url, **options) as f:
            arrays.append(f["Events"]["MET_pt"].array(library="np"))
            opened.append(f.file.source)
    assert len(asked) == 1
    plain = uproot.source.xrootd.XRootDSource(
        sources.with_token(url, facility.token()), **uproot.reading.open.defaults
    )
    assert (opened[0]._max_num_elements, opened[0]._max_element_size) == (
        plain._max_num_elements, plain._max_element_size,
    )  # fmt: skip
    plain.close()
    assert all(len(a) == len(arrays[0]) and (a == arrays[0]).all() for a in arrays)
    deadline = time.monotonic() + 10
    while (sources._CLOSING or not all(s.closed for s in opened)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(s.closed for s in opened)
    assert not sources._CLOSING
