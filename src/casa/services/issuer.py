"""The token issuer: holds the facility's signing key and mints per-user tokens.

It runs as its own process (``python -m casa.services.issuer``) and offers:

- over HTTP on ``issuer.port`` (loopback): ``/health``, the OpenID discovery document
  ``/.well-known/openid-configuration`` and the public keys at ``/jwks``;
- over a Unix socket, ``services/issuer/issuer.sock``: minting. The kernel tells the
  issuer who is calling (``SO_PEERCRED``): an account may get tokens for itself only;
  the facility's own account and root may ask for any user.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from casa.auth.tokens import (
    GATEWAY_SCOPES,
    TokenIssuer,
    default_scopes,
    ensure_signing_key,
    gateway_audience,
    jwks_from_public_pem,
    public_key_pem,
)
from casa.config import FacilityConfig, facility_paths, load_config
from casa.data.storage import close_scope
from casa.errors import ServiceError, UsageError
from casa.services.base import Health, Service, ServiceContext, get_json
from casa.services.issuer_socket import TokenSocketServer

SOCKET_NAME = "issuer.sock"
MAX_LIFETIME = 7 * 24 * 3600
#: Seconds ``request_token`` waits for the issuer's answer.
ANSWER_TIMEOUT = 10.0


def socket_path(ctx: ServiceContext) -> Path:
    """Where the issuer listens for token requests."""
    return ctx.service_dir("issuer") / SOCKET_NAME


class IssuerService(Service):
    """The facility token issuer, supervised like the other services."""

    name = "issuer"

    def port(self, ctx: ServiceContext) -> int:
        """``issuer.port``."""
        return ctx.config.issuer.port

    def prepare(self, ctx: ServiceContext) -> None:
        """Create the signing key on first start (private key mode 0600)."""
        ctx.service_dir(self.name).mkdir(parents=True, exist_ok=True)
        ensure_signing_key(ctx.paths.keys)

    def command(self, ctx: ServiceContext) -> list[str]:
        """This module, run by the same Python as casa."""
        cmd = [sys.executable, "-m", "casa.services.issuer", "--home", str(ctx.paths.home)]
        if ctx.config_file:
            cmd += ["--config", str(ctx.config_file)]
        return cmd

    def health(self, ctx: ServiceContext) -> Health:
        """GET /health and check that the issuer is this facility's."""
        url = f"http://{self.host(ctx)}:{self.port(ctx)}/health"
        body, failed = get_json(url)
        if failed:
            return failed
        if body.get("issuer") != ctx.config.issuer_url:
            return Health(False, f"{url} is another issuer ({body.get('issuer')})")
        if not socket_path(ctx).exists():
            return Health(False, "token socket not ready")
        return Health(True, "answers /health")


# -- asking the issuer ---------------------------------------------------------------------


def request_token(
    ctx: ServiceContext, user: str | None = None, scopes: list[str] | None = None,
    lifetime: int | None = None, kind: str = "data",
) -> str:  # fmt: skip
    """Ask the running issuer for a token (for the caller, or ``user`` if allowed).

    ``kind`` is ``"data"`` (storage scopes) or ``"gateway"`` (Dask Gateway credentials).
    ServiceError if the issuer is not running, refuses, or does not answer within
    ``ANSWER_TIMEOUT`` seconds.
    """
    path = socket_path(ctx)
    request = {"user": user, "scopes": scopes, "lifetime": lifetime, "kind": kind}
    try:
        data = _exchange(path, json.dumps(request).encode() + b"\n", ANSWER_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ServiceError(
            "the token issuer is not running: start the facility with 'casa up'"
        ) from None
    except TimeoutError:
        raise ServiceError(
            f"the token issuer did not answer within {ANSWER_TIMEOUT:g} s at {path}: see "
            "'casa status' and the issuer's log, and restart it with 'casa up'"
        ) from None
    except OSError as e:
        raise ServiceError(f"could not reach the token issuer at {path}: {e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("error" in answer or "token" in answer):
        raise ServiceError(
            f"the token issuer at {path} closed the connection without an answer: see its log "
            "and 'casa status'"
        )
    if "error" in answer:
        raise ServiceError(f"the issuer refused: {answer['error']}")
    return answer["token"]


def _exchange(path: Path, request: bytes, timeout: float) -> bytes:
    """Send one request line, read one answer line; TimeoutError past ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    with _connect(path, deadline) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            s.settimeout(left)
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _connect(path: Path, deadline: float) -> socket.socket:
    """A connection to the issuer, retried while its queue of waiting connections is full."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:  # the listen queue is full (a flood): wait for room
            s.close()
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.02)
        except BaseException:
            s.close()
            raise


# -- the issuer process --------------------------------------------------------------------


def _mint_for_peer(issuer: TokenIssuer, config: FacilityConfig, uid: int, request: dict) -> dict:
    try:
        caller = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {"error": f"your account (uid {uid}) has no name on this machine"}
    privileged = uid in (0, os.geteuid())
    user = request.get("user") or caller
    if user != caller and not privileged:
        return {"error": f"{caller} may get tokens for {caller} only, not for {user}"}
    if not all(c.isalnum() or c in "-_." for c in user):
        return {"error": f"{user!r} is not a valid user name"}
    kind = request.get("kind") or "data"
    if kind not in ("data", "gateway"):
        return {"error": f"unknown token kind {kind!r}: ask for 'data' or 'gateway'"}
    try:
        defaults = default_scopes(user) if kind == "data" else GATEWAY_SCOPES
        # Every storage path as storage spells it, so that no scope reaches another name's
        # folders (XRootD 5.5.3 matches scope paths as string prefixes).
        scopes = [close_scope(str(s)) for s in request.get("scopes") or defaults]
    except UsageError as e:
        return {"error": str(e)}
    if not privileged:
        allowed = set(defaults)
        extra = [s for s in scopes if s not in allowed]
        if extra:
            return {"error": f"{caller} may not ask for the scopes {' '.join(extra)}"}
    lifetime = int(request.get("lifetime") or config.issuer.token_lifetime)
    if not 1 <= lifetime <= MAX_LIFETIME:
        return {"error": f"lifetime must be between 1 second and {MAX_LIFETIME} seconds"}
    audience = gateway_audience(config.facility.name) if kind == "gateway" else None
    return {"token": issuer.mint(user, scopes, lifetime, audience=audience)}


def serve(home: str, config_file: str | None) -> None:
    """Run the issuer until SIGTERM."""
    paths = facility_paths(home)
    config = load_config(paths, config_file)
    ctx = ServiceContext(config, paths, Path(config_file) if config_file else None)
    private = ensure_signing_key(paths.keys)
    issuer = TokenIssuer(private, config.issuer_url, config.facility.name)
    jwks = jwks_from_public_pem(public_key_pem(private))
    discovery = {
        "issuer": config.issuer_url,
        "jwks_uri": f"{config.issuer_url}/jwks",
        "token_endpoint": f"unix:{socket_path(ctx)}",
    }

    class HTTPHandler(BaseHTTPRequestHandler):
        timeout = 5  # seconds without a byte before an idle connection is dropped

        def do_GET(self):  # noqa: N802 - http.server's naming
            routes = {
                "/health": {"status": "ok", "issuer": config.issuer_url},
                "/.well-known/openid-configuration": discovery,
                "/jwks": jwks,
            }
            body = routes.get(self.path.split("?")[0])
            code = 200 if body is not None else 404
            data = json.dumps(body if body is not None else {"error": "not found"}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            sys.stderr.write("issuer http: " + fmt % args + "\n")

    http = ThreadingHTTPServer((config.host_of("issuer"), config.issuer.port), HTTPHandler)
    unix = TokenSocketServer(
        socket_path(ctx),
        lambda uid, request: _mint_for_peer(issuer, config, uid, request),
        privileged={0, os.geteuid()},
    )
    unix.start()
    sys.stderr.write(f"issuer {config.issuer_url} ready on port {config.issuer.port}\n")
    sys.stderr.flush()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=http.shutdown).start())
    try:
        http.serve_forever()
    finally:
        unix.stop()


def main() -> None:
    """Entry point of the issuer process."""
    parser = argparse.ArgumentParser(prog="casa-issuer")
    parser.add_argument("--home", required=True)
    parser.add_argument("--config")
    args = parser.parse_args()
    serve(args.home, args.config)


if __name__ == "__main__":
    main()
