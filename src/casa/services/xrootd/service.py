"""The facility's XRootD servers: the origin (storage as ``/store``) and the XCache proxy.

Both authorise every request with XRootD's SciTokens plugin against the facility issuer's
key, which casa preloads into the plugin's key cache (see :mod:`casa.auth.keycache`).

A client presents its token either way XRootD knows:

- by the ``ztn`` security protocol, as every standard client (uproot, coffea, ``xrdcp``,
  ROOT) does by itself with the token WLCG discovery finds (``$BEARER_TOKEN``,
  ``$BEARER_TOKEN_FILE``, ``$XDG_RUNTIME_DIR/bt_u<UID>``, ``/tmp/bt_u<UID>``). ``ztn`` needs
  TLS: each server has a host certificate from the facility's CA
  (:mod:`casa.auth.certificates`), and logins are over TLS;
- as ``?authz=Bearer%20<token>`` on the URL (casa's own reader adds it, so that a worker's
  renewed token applies to a connection opened with an older one). The SciTokens plugin
  takes the URL's token before the login's.

The cache passes a URL's token on to the origin. A client that logged in with ``ztn`` only
has none in its URLs: for it the cache reads from the origin with a read-only token of its own
(:func:`write_cache_origin_token`), after its own SciTokens check has let that client's
token read the path.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import stat
import struct
from pathlib import Path

from casa.auth.certificates import GRID_CERTIFICATES, ensure_ca, install_ca, publish_ca
from casa.auth.keycache import preload_issuer_keys
from casa.auth.tokens import TokenIssuer, jwks_from_public_pem, unverified_claims
from casa.config import parse_size
from casa.data.storage import migrate_layout, old_layout_folders
from casa.errors import DataError, ServiceError
from casa.facility import Facility
from casa.filesystem import write_file
from casa.services.base import Health, Service, get_json

INSTALL_HINT = (
    "install Debian's XRootD packages: apt-get install xrootd-server xrootd-client "
    "xrootd-server-plugins xrootd-scitokens-plugins xrootd-client-plugins "
    "(make install does this when run as root)"
)
SCITOKENS_PLUGIN = "libXrdAccSciTokens.so"
ZTN_PLUGIN = "libXrdSecztn"
#: Who the cache's own token names, and how long it lasts (the issuer renews it).
CACHE_SUBJECT = "casa-cache"
CACHE_TOKEN_LIFETIME = 7 * 24 * 3600


def _plugin_installed(name: str) -> bool:
    stem = name.removesuffix(".so")
    patterns = [f"/usr/lib/*/{stem}*.so*", f"/usr/lib64/{stem}*.so*", f"/usr/lib/{stem}*.so*"]
    return any(glob.glob(p) for p in patterns)


def public_key_file(ctx: Facility) -> Path:
    """The issuer's public key, which the XRootD servers trust."""
    return ctx.paths.keys / "issuer.pub.pem"


def issuer_jwks(ctx: Facility, service: str) -> dict:
    """The issuer's public keys: from the state directory, or from the issuer's host.

    On the issuer's own host its key is in ``keys/``; a cache or origin on another host of
    the site asks the issuer for its JWKS over HTTP.
    """
    path = public_key_file(ctx)
    issuer_host = ctx.config.host_of("issuer")
    if path.exists():
        return jwks_from_public_pem(path.read_bytes())
    url = f"http://{issuer_host}:{ctx.config.issuer.port}/jwks"
    body, failed = get_json(url, timeout=5.0)
    if failed or not isinstance(body, dict) or not body.get("keys"):
        raise ServiceError(
            f"cannot start '{service}': the issuer's public key is not in {path} and {url} "
            f"gave none ({failed.detail if failed else body}): run 'casa up' on the issuer's "
            f"host ({issuer_host}) first"
        )
    return body


class XRootDService(Service):
    """What the origin and the cache share: binary, accounts, token checks, health."""

    def preflight(self, ctx: Facility) -> None:
        """The xrootd binary, its SciTokens plugin, and an account to run as."""
        binary = ctx.config.xrootd.binary
        if shutil.which(binary) is None:
            raise ServiceError(
                f"cannot start '{self.name}': the XRootD server program {binary!r} is not "
                f"installed; {INSTALL_HINT}"
            )
        if not _plugin_installed(SCITOKENS_PLUGIN):
            raise ServiceError(
                f"cannot start '{self.name}': XRootD's SciTokens plugin is missing; {INSTALL_HINT}"
            )
        if not _plugin_installed(ZTN_PLUGIN):
            raise ServiceError(
                f"cannot start '{self.name}': XRootD's ztn security plugin (libXrdSecztn, by "
                f"which clients present their tokens) is missing; {INSTALL_HINT}"
            )
        if ctx.as_root:
            try:
                account = ctx.daemon_account()
            except KeyError:
                raise ServiceError(
                    f"xrootd refuses to run as root and the account {ctx.config.xrootd.user!r} "
                    "does not exist: install xrootd-server (it creates the 'xrootd' account) or "
                    "set xrootd.user in casa.toml"
                ) from None
            blocked = _first_untraversable(ctx.paths.home)
            if blocked is not None:
                raise ServiceError(
                    f"the account {account.pw_name!r} that runs XRootD cannot enter {blocked}, so "
                    f"it cannot reach the facility state in {ctx.paths.home}: choose a CASA_HOME "
                    "outside it (the default for root is /var/lib/casa)"
                )

    def port(self, ctx: Facility) -> int:
        """Set by each subclass from casa.toml."""
        raise NotImplementedError

    def working_dir(self, ctx: Facility) -> Path:
        """xrootd writes a folder named after the instance into its working directory."""
        return ctx.service_dir(self.name) / "run"

    def command(self, ctx: Facility) -> list[str]:
        """``xrootd -c CONFIG -n NAME`` in the foreground, as the xrootd account under root."""
        cmd = [
            shutil.which(ctx.config.xrootd.binary) or ctx.config.xrootd.binary,
            "-c",
            str(self.config_file(ctx)),
            "-n",
            self.name,
            # A PID file of its own: xrootd writes its environment file (PID, paths) next to
            # it, and without one into /tmp, where every account could read it.
            "-s",
            str(self.working_dir(ctx) / "xrootd.pid"),
        ]
        if ctx.as_root:
            cmd += ["-R", ctx.config.xrootd.user]
        return cmd

    def environment(self, ctx: Facility) -> dict[str, str]:
        """The SciTokens plugin reads its key cache from $XDG_CACHE_HOME; the server's own
        XRootD client (the cache's, towards the origin) verifies servers with the CA folder."""
        return {
            "XDG_CACHE_HOME": str(self._xdg_cache(ctx)),
            "X509_CERT_DIR": str(ca_folder(ctx)),
        }

    def config_file(self, ctx: Facility) -> Path:
        """The generated ``xrootd`` configuration."""
        return ctx.service_dir(self.name) / f"{self.name}.cfg"

    def _xdg_cache(self, ctx: Facility) -> Path:
        return ctx.service_dir(self.name) / "xdg-cache"

    def _token_config(self, ctx: Facility) -> Path:
        return ctx.service_dir(self.name) / "scitokens.cfg"

    def _generated_files(self, ctx: Facility) -> list[Path]:
        """The configuration casa writes for the daemon."""
        directory = ctx.service_dir(self.name)
        return [self.config_file(ctx), self._token_config(ctx), directory / "authdb"]

    def _host_certificate(self, ctx: Facility) -> tuple[Path, Path]:
        folder = ctx.service_dir(self.name)
        return folder / "hostcert.pem", folder / "hostkey.pem"

    def certificate_names(self, ctx: Facility) -> list[str]:
        """What the host certificate is valid for: every address clients may use for it."""
        names = [*self.hosts(ctx), ctx.config.facility.host, "localhost", "127.0.0.1",
                 # casa bench moves loopback URLs to 127.0.0.2 for ROOT (casa.bench.rdf)
                 "127.0.0.2", "::1", socket.gethostname()]  # fmt: skip
        return list(dict.fromkeys(names))

    def _make_certificates(self, ctx: Facility) -> None:
        """The facility's CA (made once, published, installed under root) and this server's
        host certificate from it, the daemon's alone."""
        cert, key = self._host_certificate(ctx)
        account = ctx.daemon_account()
        owner = (account.pw_uid, account.pw_gid) if account else None
        ca = ensure_ca(ctx.paths.keys, ctx.config.facility.name)
        publish_ca(ca.cert, ctx.paths.certificates)
        if ctx.as_root:
            install_ca(ctx.paths.certificates)
        ca.issue(self.certificate_names(ctx), cert, key, owner)

    def _security(self, ctx: Facility) -> str:
        """Configuration lines for TLS and the ``ztn`` protocol (see the module's docstring)."""
        cert, key = self._host_certificate(ctx)
        return (
            f"xrd.tls {cert} {key}\n"
            f"xrd.tlsca certdir {ca_folder(ctx)}\n"
            "xrootd.seclib libXrdSec.so\n"
            "sec.protocol ztn\n"
            "sec.protocol unix\n"
            "sec.protbind * ztn unix\n"
        )

    def _authorization(self, ctx: Facility) -> str:
        """Configuration lines that make every request need a valid facility token."""
        authdb = ctx.service_dir(self.name) / "authdb"
        authdb.write_text("# casa: every access is decided by the bearer token\n")
        self._token_config(ctx).write_text(
            "[Global]\n"
            f"audience = {ctx.config.facility.name}\n\n"
            f"[Issuer {ctx.config.facility.name}]\n"
            f"issuer = {ctx.config.issuer_url}\n"
            "base_path = /\n"
            f"default_user = {ctx.config.xrootd.user if ctx.as_root else 'nobody'}\n"
        )
        return (
            "ofs.authorize 1\n"
            f"ofs.authlib {SCITOKENS_PLUGIN} config={self._token_config(ctx)}\n"
            f"acc.authdb {authdb}\n" + self._security(ctx)
        )

    def _prepare_common(self, ctx: Facility) -> None:
        ctx.service_dir(self.name).mkdir(parents=True, exist_ok=True)
        self.working_dir(ctx).mkdir(parents=True, exist_ok=True)
        jwks = issuer_jwks(ctx, self.name)
        preload_issuer_keys(self._xdg_cache(ctx), ctx.config.issuer_url, jwks)
        self._give_to_daemon(ctx, self.working_dir(ctx), self._xdg_cache(ctx))
        self._make_certificates(ctx)

    def _give_to_daemon(self, ctx: Facility, *paths: Path) -> None:
        """Hand folders the daemon writes to over to its account, for its eyes only.

        What is in them (storage, the cache's copies and ``.cinfo`` files, XRootD's admin
        and PID files) names users and their private datasets; other accounts read data
        through the servers, with a token. Files left by an older casa lose the permissions
        other accounts had.
        """
        account = ctx.daemon_account()
        for top in paths:
            for root, dirs, files in os.walk(top):
                _make_private(Path(root), account)
                for name in dirs + files:
                    _make_private(Path(root) / name, account)

    def _let_daemon_read(self, ctx: Facility, *files: Path) -> None:
        """Generated configuration: written by the facility's account, read by the daemon's."""
        account = ctx.daemon_account()
        for path in files:
            if account is not None:
                os.chown(path, 0, account.pw_gid)
            os.chmod(path, 0o640 if account is not None else 0o600)

    def health(self, ctx: Facility) -> Health:
        """An XRootD protocol handshake: the server must answer as a data server."""
        return xrootd_handshake(self.host(ctx), self.port(ctx))


class OriginService(XRootDService):
    """The data server exporting facility storage as ``/store``."""

    name = "origin"

    def port(self, ctx: Facility) -> int:
        """``origin.port``."""
        return ctx.config.origin.port

    def prepare(self, ctx: Facility) -> None:
        """Storage folders, the token configuration and the xrootd configuration."""
        self._prepare_common(ctx)
        storage = ctx.paths.storage
        for sub in ("store/data", "store/user"):
            (storage / sub).mkdir(parents=True, exist_ok=True)
        _migrate_storage_layout(ctx)
        # Only the XRootD account reads storage directly; users go through tokens.
        os.chmod(storage, 0o700)
        self._give_to_daemon(ctx, storage)
        run = self.working_dir(ctx)
        self.config_file(ctx).write_text(
            "# Generated by casa: the facility's origin. Edit casa.toml instead.\n"
            f"xrd.port {self.port(ctx)}\n"
            "all.role server\n"
            "all.export /store\n"
            f"oss.localroot {storage}\n"
            f"all.adminpath {run}\n"
            f"all.pidpath {run}\n" + self._authorization(ctx)
        )
        self._let_daemon_read(ctx, *self._generated_files(ctx))


class CacheService(XRootDService):
    """XCache: an XRootD proxy with a disk cache, in front of the origin."""

    name = "cache"

    #: How the cache's XRootD client reaches the origin. The library defaults (5 attempts
    #: in 120 s windows) would keep a reader waiting minutes when the origin is down.
    ORIGIN_CLIENT_ENV = {"XRD_CONNECTIONWINDOW": "3", "XRD_CONNECTIONRETRY": "2"}

    def environment(self, ctx: Facility) -> dict[str, str]:
        """The key cache location, short retries towards the origin, and the cache's own
        token for reads that came without one in the URL."""
        env = {**super().environment(ctx), **self.ORIGIN_CLIENT_ENV}
        token = cache_origin_token_file(ctx)
        if token.exists():
            env["BEARER_TOKEN_FILE"] = str(token)
        return env

    def port(self, ctx: Facility) -> int:
        """``cache.port``."""
        return ctx.config.cache.port

    def hosts(self, ctx: Facility) -> list[str]:
        """The facility's cache host and ``site.caches``: one cache on each."""
        return ctx.config.cache_hosts()

    def prepare(self, ctx: Facility) -> None:
        """The cache's disk space, its token, the token configuration and the xrootd
        configuration."""
        self._prepare_common(ctx)
        issuer_key = ctx.paths.keys / "issuer.pem"
        if issuer_key.exists():
            write_cache_origin_token(ctx, _issuer(ctx, issuer_key))
        disk = ctx.paths.cache_disk
        disk.mkdir(parents=True, exist_ok=True)
        for stale in old_layout_folders(disk):  # copies of files storage now names otherwise
            shutil.rmtree(stale, ignore_errors=True)
        self._give_to_daemon(ctx, disk)
        c = ctx.config.cache
        run = self.working_dir(ctx)
        self.config_file(ctx).write_text(
            "# Generated by casa: the facility's XCache. Edit casa.toml instead.\n"
            f"xrd.port {self.port(ctx)}\n"
            "all.role server\n"
            "all.export /store\n"
            "ofs.osslib libXrdPss.so\n"
            "pss.cachelib libXrdPfc.so\n"
            f"pss.origin {ctx.config.host_of('origin')}:{ctx.config.origin.port}\n"
            f"oss.localroot {disk}\n"
            f"all.adminpath {run}\n"
            f"all.pidpath {run}\n"
            f"pfc.ram {parse_size(c.ram) >> 20}m\n"
            f"pfc.blocksize {parse_size(c.blocksize) >> 10}k\n"
            f"pfc.diskusage {c.disk_low:.4f} {c.disk_high:.4f}\n"
            f"pfc.prefetch {c.prefetch}\n" + self._authorization(ctx)
        )
        self._let_daemon_read(ctx, *self._generated_files(ctx))


def ca_folder(ctx: Facility) -> Path:
    """The CA folder the servers and their own clients use: the system's, where casa installs
    the facility's CA when it runs as root (so every account's clients find it), else the
    facility's own (``$X509_CERT_DIR`` for its clients)."""
    return GRID_CERTIFICATES if ctx.as_root else ctx.paths.certificates


def cache_origin_token_file(ctx: Facility) -> Path:
    """The cache's own token, which its XRootD client presents to the origin."""
    return ctx.service_dir(CacheService.name) / "origin.token"


def _issuer(ctx: Facility, key: Path) -> TokenIssuer:
    return TokenIssuer(key, ctx.config.issuer_url, ctx.config.facility.name)


def write_cache_origin_token(ctx: Facility, issuer: TokenIssuer) -> Path:
    """Mint the cache's token (read-only, all of ``/store``) into :func:`cache_origin_token_file`.

    Only the daemon's account reads it. The cache presents it to the origin when a client's
    URL carries no token (the client logged in with ``ztn``), and only after the cache's own
    SciTokens check let that client read the path: it never widens what a client may read.
    """
    path = cache_origin_token_file(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    account = ctx.daemon_account()
    token = issuer.mint(CACHE_SUBJECT, ["storage.read:/store"], CACHE_TOKEN_LIFETIME)
    owner = (account.pw_uid, account.pw_gid) if account else None
    write_file(path, token + "\n", mode=0o600, owner=owner)
    return path


def cache_origin_token_due(ctx: Facility) -> bool:
    """Whether the cache's token is missing or past a third of its lifetime."""
    import time

    try:
        claims = unverified_claims(cache_origin_token_file(ctx).read_text().strip())
    except (OSError, DataError):
        return True
    return time.time() > claims.get("iat", 0) + CACHE_TOKEN_LIFETIME / 3


def _migrate_storage_layout(ctx: Facility) -> None:
    """Storage written before casa closed its names, and the catalog's URLs into it, in the
    layout of :func:`casa.names.storage_path` (renames only: nothing is copied or lost)."""

    config = ctx.config
    servers = (
        *(config.cache_url(host) for host in config.cache_hosts()),
        f"root://{config.host_of('origin')}:{config.origin.port}",
    )
    if not ctx.paths.database.exists():
        migrate_layout(ctx.paths.storage, lambda rewrite: 0, servers)
        return
    catalog = ctx.catalog()
    try:
        migrate_layout(ctx.paths.storage, catalog.rewrite_urls, servers)
    finally:
        catalog.close()


def _make_private(path: Path, account: pwd.struct_passwd | None) -> None:
    """``path`` owned by ``account`` (if given) and closed to group and others."""
    info = path.lstat()
    if account is not None and (info.st_uid, info.st_gid) != (account.pw_uid, account.pw_gid):
        os.lchown(path, account.pw_uid, account.pw_gid)
    if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)


def _first_untraversable(path: Path) -> Path | None:
    """The first folder above ``path`` that other accounts may not enter, if any."""
    for parent in [*reversed(path.parents), path]:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            return None
        if not mode & 0o001:
            return parent
    return None


def xrootd_handshake(host: str, port: int, timeout: float = 2.0) -> Health:
    """Open a connection and do the XRootD initial handshake (protocol spec, section 2.1).

    Done with a plain socket rather than the XRootD client library, whose process-wide
    connection state would hold on to an early refusal while a server is still starting.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">5i", 0, 0, 0, 4, 2012))
            header = _recv_exactly(s, 8)
            _stream, status, length = struct.unpack(">2sHI", header)
            body = _recv_exactly(s, length)
    except OSError as e:
        return Health(False, f"no XRootD handshake on port {port}: {e}")
    if status != 0 or length < 8:
        return Health(False, f"unexpected XRootD handshake answer (status {status})")
    version, server_type = struct.unpack(">2I", body[:8])
    if server_type != 1:
        return Health(False, f"port {port} answers as an XRootD load balancer, not a data server")
    return Health(True, f"XRootD protocol {version >> 8:x}.{version & 0xFF:x}")


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        data += chunk
    return data
