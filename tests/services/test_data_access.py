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
