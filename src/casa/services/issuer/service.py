"""The token issuer: holds the facility's signing key and mints per-user tokens.

It runs as its own process (``python -m casa.services.issuer.service``) and offers:

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
import sys
import threading
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
from casa.errors import UsageError
from casa.facility import Facility
from casa.names import check_storage_name, close_scope
from casa.services.base import Health, Service, casa_module_command, get_json
from casa.services.issuer.unix_socket import TokenSocketServer

MAX_LIFETIME = 7 * 24 * 3600


class IssuerService(Service):
    """The facility token issuer, supervised like the other services."""

    name = "issuer"

    def port(self, ctx: Facility) -> int:
        """``issuer.port``."""
        return ctx.config.issuer.port

    def prepare(self, ctx: Facility) -> None:
        """Create the signing key on first start (private key mode 0600)."""
        ctx.service_dir(self.name).mkdir(parents=True, exist_ok=True)
        ensure_signing_key(ctx.paths.keys)

    def command(self, ctx: Facility) -> list[str]:
        """This module, run by the same Python as casa."""
        return casa_module_command(ctx, "casa.services.issuer.service")

    def health(self, ctx: Facility) -> Health:
        """GET /health and check that the issuer is this facility's."""
        url = f"http://{self.host(ctx)}:{self.port(ctx)}/health"
        body, failed = get_json(url)
        if failed:
            return failed
        if body.get("issuer") != ctx.config.issuer_url:
            return Health(False, f"{url} is another issuer ({body.get('issuer')})")
        if not ctx.issuer_socket.exists():
            return Health(False, "token socket not ready")
        return Health(True, "answers /health")


# -- asking the issuer ---------------------------------------------------------------------


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
    try:
        # Any account whose area can be a storage folder: a site's accounts (OpenID Connect
        # logs in existing ones, such as first.last) need not follow casa user add's rule.
        check_storage_name(user, "user name")
    except UsageError as e:
        return {"error": str(e)}
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
    ctx = Facility(config, paths, Path(config_file) if config_file else None)
    private = ensure_signing_key(paths.keys)
    issuer = TokenIssuer(private, config.issuer_url, config.facility.name)
    jwks = jwks_from_public_pem(public_key_pem(private))
    discovery = {
        "issuer": config.issuer_url,
        "jwks_uri": f"{config.issuer_url}/jwks",
        "token_endpoint": f"unix:{ctx.issuer_socket}",
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
        ctx.issuer_socket,
        lambda uid, request: _mint_for_peer(issuer, config, uid, request),
        privileged={0, os.geteuid()},
    )
    unix.start()
    threading.Thread(target=_renew_cache_token, args=(ctx, issuer), daemon=True).start()
    sys.stderr.write(f"issuer {config.issuer_url} ready on port {config.issuer.port}\n")
    sys.stderr.flush()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=http.shutdown).start())
    try:
        http.serve_forever()
    finally:
        unix.stop()


#: How often the issuer looks whether the cache's own token is due for renewal.
CACHE_TOKEN_CHECK_SECONDS = 600


def _renew_cache_token(ctx: Facility, issuer: TokenIssuer) -> None:
    """Keep the token of this host's cache (:func:`casa.services.xrootd.service.
    write_cache_origin_token`) fresh, for as long as the issuer runs."""
    import time

    from casa.services.xrootd.service import (
        CacheService,
        cache_origin_token_due,
        write_cache_origin_token,
    )

    while True:
        try:
            if CacheService().runs_here(ctx) and cache_origin_token_due(ctx):
                write_cache_origin_token(ctx, issuer)
                sys.stderr.write("issuer: renewed the cache's token\n")
        except OSError as e:  # a full disk, say: try again at the next check
            sys.stderr.write(f"issuer: cannot renew the cache's token: {e}\n")
        time.sleep(CACHE_TOKEN_CHECK_SECONDS)


def main() -> None:
    """Entry point of the issuer process."""
    parser = argparse.ArgumentParser(prog="casa-issuer")
    parser.add_argument("--home", required=True)
    parser.add_argument("--config")
    args = parser.parse_args()
    serve(args.home, args.config)


if __name__ == "__main__":
    main()
