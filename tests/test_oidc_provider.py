"""The loopback OpenID Connect provider alone, driven through the authorization-code flow."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests

from oidc_provider import NODE_HINT, OIDCProvider, browserless_login

pytestmark = pytest.mark.skipif(
    (shutil.which("node") is None or shutil.which("npm") is None) and not os.environ.get("CI"),
    reason=f"the test OpenID Connect provider {NODE_HINT}",
)

CLIENT_ID = "casa-hub"
CLIENT_SECRET = "hub-secret-" + secrets.token_hex(8)
USERS: dict[str, dict[str, Any]] = {
    "alice": {"password": "alice-pw", "groups": ["physicists"], "email": "alice@example.org"},
    "bob": {"password": "bob-pw", "groups": ["physicists", "admins"], "email": "bob@example.org"},
    "mallory": {"password": "mallory-pw", "groups": ["guests"], "email": "mallory@example.org"},
}


class _Callback(BaseHTTPRequestHandler):
    """The relying party's redirect URI: records each query and answers it back as JSON."""

    server: _CallbackServer

    def do_GET(self) -> None:
        """Record the query and send it back as JSON."""
        query = {key: values[0] for key, values in parse_qs(urlsplit(self.path).query).items()}
        self.server.calls.append(query)
        body = json.dumps(query).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


class _CallbackServer(ThreadingHTTPServer):
    """A tiny relying party on a free loopback port."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.calls: list[dict[str, str]] = []

    @property
    def redirect_uri(self) -> str:
        """Where the provider sends the browser back with the code."""
        return f"http://127.0.0.1:{self.server_address[1]}/oauth_callback"


@pytest.fixture(scope="module")
def callback() -> Iterator[_CallbackServer]:
    """The relying party's callback, running for the module."""
    server = _CallbackServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def provider(callback: _CallbackServer) -> Iterator[OIDCProvider]:
    """The provider with alice, bob and mallory, running for the module."""
    with OIDCProvider(USERS, CLIENT_ID, CLIENT_SECRET, callback.redirect_uri) as op:
        yield op


def _authorize(
    provider: OIDCProvider, redirect_uri: str, state: str, extra: dict[str, str] | None = None
) -> str:
    """The authorization request a relying party sends the browser to."""
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "openid profile email groups",
        "state": state,
        **(extra or {}),
    }
    return f"{provider.authorize_url}?{urlencode(query)}"


def _redeem(
    provider: OIDCProvider, code: str, redirect_uri: str, method: str, secret: str = CLIENT_SECRET
) -> requests.Response:
    """Exchange a code at the token endpoint, authenticating with client_secret_basic or _post."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if method == "client_secret_post":
        data |= {"client_id": CLIENT_ID, "client_secret": secret}
        return requests.post(provider.token_url, data=data, timeout=10)
    return requests.post(provider.token_url, data=data, auth=(CLIENT_ID, secret), timeout=10)


def _login_code(
    provider: OIDCProvider, callback: _CallbackServer, username: str, password: str
) -> tuple[requests.Response, str]:
    """Log in from the authorization request; return the final response and the state sent."""
    state = secrets.token_urlsafe(16)
    with requests.Session() as session:
        response = browserless_login(
            _authorize(provider, callback.redirect_uri, state), username, password, session
        )
    return response, state


def test_discovery(provider: OIDCProvider) -> None:
    """The discovery document names loopback endpoints, the groups scope and both auth methods."""
    assert provider.issuer.startswith("http://127.0.0.1:")
    assert provider.configuration["issuer"] == provider.issuer
    for url in (provider.authorize_url, provider.token_url, provider.userinfo_url):
        assert url.startswith(provider.issuer + "/")
    assert {"openid", "profile", "email", "groups"} <= set(
        provider.configuration["scopes_supported"]
    )
    assert {"preferred_username", "email", "groups"} <= set(
        provider.configuration["claims_supported"]
    )
    assert {"client_secret_basic", "client_secret_post"} <= set(
        provider.configuration["token_endpoint_auth_methods_supported"]
    )
    assert provider.configuration["response_types_supported"] == ["code"]


@pytest.mark.parametrize(
    ("username", "method"),
    [
        ("alice", "client_secret_basic"),
        ("bob", "client_secret_post"),
        ("mallory", "client_secret_basic"),
    ],
)
def test_login_code_token_userinfo(
    provider: OIDCProvider, callback: _CallbackServer, username: str, method: str
) -> None:
    """The form login ends at the callback with a code whose tokens carry the user's claims."""
    user = USERS[username]
    response, state = _login_code(provider, callback, username, user["password"])
    assert response.status_code == 200, response.text
    assert response.url.startswith(callback.redirect_uri + "?")
    sent_back = response.json()
    assert sent_back["state"] == state
    assert sent_back["iss"] == provider.issuer
    assert "error" not in sent_back

    tokens = _redeem(provider, sent_back["code"], callback.redirect_uri, method)
    assert tokens.status_code == 200, tokens.text
    tokens_json = tokens.json()
    assert tokens_json["token_type"].lower() == "bearer"

    userinfo = requests.get(
        provider.userinfo_url,
        headers={"Authorization": f"Bearer {tokens_json['access_token']}"},
        timeout=10,
    )
    assert userinfo.status_code == 200, userinfo.text
    claims = userinfo.json()
    assert claims["sub"] == username
    assert claims["preferred_username"] == username
    assert claims["email"] == user["email"]
    assert claims["groups"] == user["groups"]

    signing_key = jwt.PyJWKClient(provider.jwks_url).get_signing_key_from_jwt(
        tokens_json["id_token"]
    )
    id_token = jwt.decode(
        tokens_json["id_token"],
        signing_key.key,
        algorithms=["RS256"],
        audience=CLIENT_ID,
        issuer=provider.issuer,
    )
    assert id_token["sub"] == username
    assert id_token["groups"] == user["groups"]


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "not-alice-pw"), ("alice", ""), ("eve", "alice-pw")],
    ids=["wrong-password", "empty-password", "unknown-user"],
)
def test_bad_credentials_yield_no_code(
    provider: OIDCProvider, callback: _CallbackServer, username: str, password: str
) -> None:
    """A wrong password or an unknown user gets the form back with an error, and no code."""
    calls_before = len(callback.calls)
    response, _ = _login_code(provider, callback, username, password)
    assert response.status_code == 401
    assert response.url.startswith(provider.issuer + "/interaction/")
    assert "Invalid username or password" in response.text
    assert 'type="password"' in response.text
    assert "code=" not in response.url
    assert len(callback.calls) == calls_before


def test_code_is_single_use_and_needs_the_secret(
    provider: OIDCProvider, callback: _CallbackServer
) -> None:
    """A code is refused with the wrong client secret, redeemed once, then refused again."""
    response, _ = _login_code(provider, callback, "alice", USERS["alice"]["password"])
    code = response.json()["code"]
    wrong = _redeem(provider, code, callback.redirect_uri, "client_secret_basic", secret="nope")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    first = _redeem(provider, code, callback.redirect_uri, "client_secret_post")
    assert first.status_code == 200, first.text
    again = _redeem(provider, code, callback.redirect_uri, "client_secret_post")
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_pkce_is_honoured_when_the_client_sends_it(
    provider: OIDCProvider, callback: _CallbackServer
) -> None:
    """With a code_challenge (as oauthenticator sends by default) only the right verifier works."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    pkce = {"code_challenge": challenge.decode(), "code_challenge_method": "S256"}
    redirect_uri = callback.redirect_uri
    with requests.Session() as session:
        response = browserless_login(
            _authorize(provider, redirect_uri, "pkce", pkce), "alice", "alice-pw", session
        )
    code = response.json()["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    auth = (CLIENT_ID, CLIENT_SECRET)
    wrong = requests.post(
        provider.token_url, data=data | {"code_verifier": "x" * 43}, auth=auth, timeout=10
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"

    with requests.Session() as session:
        response = browserless_login(
            _authorize(provider, redirect_uri, "pkce", pkce), "alice", "alice-pw", session
        )
    data["code"] = response.json()["code"]
    right = requests.post(
        provider.token_url, data=data | {"code_verifier": verifier}, auth=auth, timeout=10
    )
    assert right.status_code == 200, right.text


def test_unregistered_redirect_uri_is_refused(provider: OIDCProvider) -> None:
    """The provider sends no code to a redirect URI that the client did not register."""
    evil = "http://127.0.0.1:9/elsewhere"
    with requests.Session() as session:
        response = browserless_login(
            _authorize(provider, evil, "s"), "alice", USERS["alice"]["password"], session
        )
    assert response.status_code == 400
    assert "redirect_uri" in response.text
    assert not response.url.startswith(evil)


def test_provider_session_skips_the_form(provider: OIDCProvider, callback: _CallbackServer) -> None:
    """A browser already signed in at the provider goes straight back with a new code."""
    redirect_uri = callback.redirect_uri
    with requests.Session() as session:
        first = browserless_login(
            _authorize(provider, redirect_uri, "one"), "bob", "bob-pw", session
        )
        assert first.json()["state"] == "one"
        again = browserless_login(
            _authorize(provider, redirect_uri, "two"), "bob", "wrong", session
        )
    assert again.status_code == 200
    assert again.json()["state"] == "two"
    assert again.json()["code"] != first.json()["code"]


def test_stops_cleanly(callback: _CallbackServer) -> None:
    """Leaving the with block stops node with SIGTERM, and it exits with status 0."""
    op = OIDCProvider(USERS, CLIENT_ID, CLIENT_SECRET, [callback.redirect_uri])
    with op:
        assert op.process is not None and op.process.poll() is None
        issuer = op.issuer
        assert requests.get(issuer + "/jwks", timeout=10).status_code == 200
    assert op.process.returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(issuer + "/jwks", timeout=5)
