"""A real OpenID Connect provider on loopback (node's oidc-provider) and a browserless login.

Tests import it as ``from oidc_provider import OIDCProvider, browserless_login``::

    users = {"alice": {"password": "pw", "groups": ["physicists"], "email": "alice@example.org"}}
    with OIDCProvider(users, "hub", "secret", "http://127.0.0.1:8000/hub/oauth_callback") as op:
        session = requests.Session()
        response = browserless_login(hub_url + "/hub/oauth_login", "alice", "pw", session)

The provider (``tests/oidc/provider.mjs``) needs Node.js 20 or newer and npm; its npm packages
are installed from ``tests/oidc/package-lock.json`` on first use.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import requests

#: The folder of the provider: package.json, package-lock.json, provider.mjs.
OIDC_DIR: Path = Path(__file__).resolve().parent / "oidc"

#: Says how to get what the provider needs when node or npm is missing.
NODE_HINT: str = "needs Node.js >= 20 and npm (Debian: apt-get install nodejs npm)"

_STAMP_NAME = ".casa-installed"
_installed = False
_install_lock = threading.Lock()


def _package_digest(folder: Path) -> str:
    """The sha256 of package.json and package-lock.json: what node_modules was installed from."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = folder / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"-")
    return digest.hexdigest()


def ensure_node_modules() -> Path:
    """Install the provider's npm packages in tests/oidc once (npm ci); return that folder."""
    global _installed
    with _install_lock:
        if _installed:
            return OIDC_DIR
        stamp = OIDC_DIR / "node_modules" / _STAMP_NAME
        wanted = _package_digest(OIDC_DIR)
        if not (stamp.exists() and stamp.read_text().strip() == wanted):
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError(f"the test OpenID Connect provider {NODE_HINT}")
            # Several test processes may start at once: one installs, the others wait.
            lock_path = Path(tempfile.gettempdir()) / "casa-tests-oidc-npm.lock"
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (stamp.exists() and stamp.read_text().strip() == wanted):
                    verb = "ci" if (OIDC_DIR / "package-lock.json").exists() else "install"
                    command = [npm, verb, "--no-audit", "--no-fund", "--ignore-scripts"]
                    done = subprocess.run(
                        command, cwd=OIDC_DIR, capture_output=True, text=True, timeout=600
                    )
                    if done.returncode != 0:
                        raise RuntimeError(
                            f"`npm {verb}` in {OIDC_DIR} failed ({done.returncode}):\n"
                            f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
                        )
                    stamp.write_text(wanted + "\n")
        _installed = True
        return OIDC_DIR


class OIDCProvider:
    """The loopback OpenID Connect provider, run with node for the span of a ``with`` block."""

    def __init__(
        self,
        users: dict[str, dict[str, Any]],
        client_id: str,
        client_secret: str,
        redirect_uri: str | Sequence[str],
        *,
        startup_timeout: float = 30.0,
    ) -> None:
        """Describe the provider: its accounts, its one confidential client and its redirect URIs."""
        self.users = users
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: list[str] = (
            [redirect_uri] if isinstance(redirect_uri, str) else list(redirect_uri)
        )
        self.startup_timeout = startup_timeout
        #: The node process while the provider runs (its returncode once stopped).
        self.process: subprocess.Popen[str] | None = None
        #: ``http://127.0.0.1:<port>``, the provider's issuer.
        self.issuer: str = ""
        #: The discovery document, ``/.well-known/openid-configuration``.
        self.configuration: dict[str, Any] = {}
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._stderr: Any = None

    @property
    def authorize_url(self) -> str:
        """The authorization endpoint."""
        return str(self.configuration["authorization_endpoint"])

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return str(self.configuration["token_endpoint"])

    @property
    def userinfo_url(self) -> str:
        """The userinfo endpoint."""
        return str(self.configuration["userinfo_endpoint"])

    @property
    def jwks_url(self) -> str:
        """The JSON Web Key Set of the ID token signing key."""
        return str(self.configuration["jwks_uri"])

    def log(self) -> str:
        """What the provider wrote to stderr so far."""
        if self._workdir is None:
            return ""
        path = Path(self._workdir.name) / "provider.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> OIDCProvider:
        """Start node provider.mjs on a free loopback port and read the discovery document."""
        if self.process is not None:
            raise RuntimeError("the provider is already running")
        node = shutil.which("node")
        if node is None:
            raise RuntimeError(f"the test OpenID Connect provider {NODE_HINT}")
        folder = ensure_node_modules()
        self._workdir = tempfile.TemporaryDirectory(prefix="casa-oidc-")
        work = Path(self._workdir.name)
        config = {
            "port": 0,
            "client": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "redirect_uris": self.redirect_uris,
            },
            "users": self.users,
        }
        config_path = work / "config.json"
        config_path.write_text(json.dumps(config))
        config_path.chmod(0o600)
        self._stderr = open(work / "provider.log", "w")
        self.process = subprocess.Popen(
            [node, str(folder / "provider.mjs"), str(config_path)],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(lines,), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"the OpenID Connect provider did not start in {self.startup_timeout:.0f} s:\n"
                f"{self.log()}"
            ) from None
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the OpenID Connect provider did not start:\n{self.log()}")
        self.issuer = line.split(maxsplit=1)[1].strip()
        response = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        self.configuration = response.json()
        return self

    def _read_stdout(self, lines: queue.Queue[str]) -> None:
        """Hand the first line of the provider's output over, then drain the rest."""
        assert self.process is not None and self.process.stdout is not None
        first = True
        for line in self.process.stdout:
            if first:
                lines.put(line)
                first = False
        if first:
            lines.put("")

    def stop(self) -> None:
        """Stop the provider (SIGTERM, then SIGKILL after 10 s) and remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> OIDCProvider:
        """Start the provider."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the provider."""
        self.stop()


class _FormParser(HTMLParser):
    """Collect the forms of a page: action, method and every named input with its type."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = {
                "action": values.get("action", ""),
                "method": values.get("method", "get").lower(),
                "inputs": [],
            }
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and values.get("name"):
            self._current["inputs"].append(
                (values["name"], values.get("type", "text").lower(), values.get("value", ""))
            )

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _login_form(html: str) -> dict[str, Any] | None:
    """The first form of the page with a password field, or None."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    for form in parser.forms:
        if any(kind == "password" for _, kind, _ in form["inputs"]):
            return form
    return None


def browserless_login(
    start_url: str, username: str, password: str, session: requests.Session
) -> requests.Response:
    """Log in through the provider's form from start_url, following every redirect; return the end."""
    response = session.get(start_url, allow_redirects=True, timeout=30)
    form = (
        _login_form(response.text) if "html" in response.headers.get("content-type", "") else None
    )
    if form is None:
        # Already logged in at the provider (or no login page on the way): nothing to fill in.
        return response
    data: dict[str, str] = {}
    username_field = None
    for name, kind, value in form["inputs"]:
        if kind == "password":
            data[name] = password
        elif kind in ("text", "email") and username_field is None:
            username_field = name
            data[name] = username
        elif kind not in ("submit", "button", "checkbox", "radio", "file", "image", "reset"):
            data[name] = value
    if username_field is None:
        raise ValueError(f"the login form at {response.url} has no username field")
    action = urljoin(response.url, form["action"] or response.url)
    if form["method"] == "post":
        return session.post(action, data=data, allow_redirects=True, timeout=30)
    return session.get(action, params=data, allow_redirects=True, timeout=30)
