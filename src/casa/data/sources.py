"""Where bytes come from: local files, or ``root://`` URLs read with the caller's token.

The token is looked up on the worker that opens the file, by WLCG bearer-token discovery,
and attached to the request as XRootD's ``authz`` opaque data. It never appears in the
catalog, in WorkItems or in summaries; error texts are scrubbed of it.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse

import uproot.source.futures
import uproot.source.xrootd

from casa.auth.tokens import discover_token, discovery_locations
from casa.errors import DataError

_AUTHZ = re.compile(r"authz=[^&\s'\"]+")


def is_remote(url: str) -> bool:
    """Whether a catalog URL is read over XRootD."""
    return url.startswith(("root://", "roots://"))


#: Set on batch workers (HTCondor, Slurm): the cache of the worker's own site.
SITE_CACHE_ENV = "CASA_CACHE_URL"


def via_site_cache(url: str, cache_url: str | None) -> str:
    """``url`` read through the site's cache: ``root://A//store/x`` -> ``CACHE//store/x``.

    The catalog names the facility's cache; a worker at another site reads the same
    ``/store`` path through the cache beside it.
    """
    if not cache_url or not is_remote(url):
        return url
    path = url.split("//", 2)[2] if url.count("//") >= 2 else ""
    return f"{cache_url.rstrip('/')}//{path.lstrip('/')}"


def with_token(url: str, token: str) -> str:
    """``url`` with the bearer token as ``authz`` opaque data."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}authz=Bearer%20{urllib.parse.quote(token, safe='')}"


def scrub(text: str) -> str:
    """Remove tokens from a message before it is shown or logged."""
    return _AUTHZ.sub("authz=<token>", text)


#: How the XRootD client waits for a server that does not answer. Its defaults wait up to
#: 10 minutes for a dead cache (5 connection attempts 120 s apart; timeouts checked every
#: 15 s) and then refuse the server for 30 minutes (so a long-lived worker could not read
#: from a restarted cache). An ``XRD_*`` variable in the environment wins over these.
XROOTD_WAITS = {
    "ConnectionWindow": 5,
    "ConnectionRetry": 2,
    "StreamErrorWindow": 5,
    "TimeoutResolution": 1,
}
#: Seconds one XRootD request may take before the read fails (uproot's ``timeout``).
XROOTD_REQUEST_TIMEOUT = 30


def bound_xrootd_waits() -> None:
    """Make this process's XRootD client give up on a dead server within seconds."""
    from XRootD import client

    for key, value in XROOTD_WAITS.items():
        client.EnvPutInt(key, value)  # refused (False) when XRD_<KEY> was set by the user


#: Each data server's vector-read limits (elements per request, bytes per element), asked
#: once per process: uproot asks the server again on every open, and coffea opens the
#: file of every chunk.
_SERVER_LIMITS: dict[str, tuple[int, int]] = {}
#: Files whose close was sent and not yet answered (kept alive until it is).
_CLOSING: set = set()
_CLOSING_LOCK = threading.Lock()


class _ClosedInBackground(uproot.source.xrootd.XRootDResource):
    """uproot's XRootD resource, whose close does not wait for the server's answer.

    A chunk's file is closed when the chunk is done; waiting for the close was a round
    trip to the cache on every chunk (docs/performance.md). The close is still sent, and
    the file object kept until the server answers.
    """

    def __exit__(self, exception_type, exception_value, traceback):
        file = self._file
        if not file.is_open():  # closed already (uproot may close a file twice)
            return
        with _CLOSING_LOCK:
            _CLOSING.add(file)

        def closed(status, response, hostlist):
            with _CLOSING_LOCK:
                _CLOSING.discard(file)

        status = file.close(timeout=self._xrd_timeout(), callback=closed)
        if not status.ok:  # not sent: nothing will answer
            with _CLOSING_LOCK:
                _CLOSING.discard(file)


class TokenXRootDSource(uproot.source.xrootd.XRootDSource):
    """uproot's XRootD source, presenting the token WLCG discovery finds on this worker.

    Two round trips of uproot's per open are saved: the server's vector-read limits are
    asked once per server and process, and closing does not wait for the server.
    """

    def __init__(self, file_path: str, **options):
        found = discover_token()
        if found is None:
            raise DataError(
                f"no bearer token found to read {file_path} (looked in "
                f"{', '.join(discovery_locations())}); get one with 'casa token issue'"
            )
        file_path = via_site_cache(file_path, os.environ.get(SITE_CACHE_ENV))
        self._public_path = file_path
        bound_xrootd_waits()
        try:
            super().__init__(with_token(file_path, found.token), **options)
        except Exception as e:  # uproot quotes the full URL: keep the token out of the message
            e.args = tuple(scrub(a) if isinstance(a, str) else a for a in e.args)
            if isinstance(e, OSError) and "Server responded with an error" not in str(e):
                # The server did not answer (uproot's server query leaves out the URL).
                message = scrub(str(e))
                if "XRootD error" not in message:
                    message = f"XRootD error: {message} in file {file_path}"
                raise ServerNotAnswering(message) from None
            raise

    def _open(self) -> None:
        """uproot's ``XRootDSource._open``, with the server's limits asked once."""
        self._resource = _ClosedInBackground(self._file_path, self._timeout)
        trivial = uproot.source.xrootd.trivial_resource
        if self._use_threads:  # only merges split chunks: needs no resource of its own
            self._executor = uproot.source.futures.ResourceThreadPoolExecutor(
                [trivial() for _ in range(self._num_workers)]
            )
        else:
            self._executor = uproot.source.futures.ResourceTrivialExecutor(trivial())
        server = self._resource.file.get_property("DataServer") or self._file_path
        limits = _SERVER_LIMITS.get(server)
        if limits is None:
            limits = _SERVER_LIMITS[server] = uproot.source.xrootd.get_server_config(
                self._resource.file
            )
        self._max_num_elements, self._max_element_size = limits
        if self._desired_max_num_elements is not None:
            self._max_num_elements = min(self._max_num_elements, self._desired_max_num_elements)

    def __repr__(self) -> str:
        return f"<TokenXRootDSource {self._public_path!r}>"


class ServerNotAnswering(OSError):
    """An XRootD server did not answer (connection refused or lost, request expired)."""


def uproot_options_for(urls: list[str]) -> dict:
    """The uproot options a run needs to read these URLs."""
    if any(is_remote(u) for u in urls):
        return {"handler": TokenXRootDSource, "timeout": XROOTD_REQUEST_TIMEOUT}
    return {}


def require_token(urls: list[str]) -> None:
    """DataError naming where discovery looked, if remote URLs are to be read without a token."""
    remote = [u for u in urls if is_remote(u)]
    if remote and discover_token() is None:
        raise DataError(
            f"reading {remote[0]} needs a bearer token, and none was found (looked in "
            f"{', '.join(discovery_locations())}); get one with 'casa token issue'"
        )


_REFUSED_PATH = re.compile(r"Unable to open (/\S+?);? permission denied")


def refused_path(text: str) -> str | None:
    """The namespace path in an XRootD 'permission denied' message."""
    m = _REFUSED_PATH.search(text)
    return m[1] if m else None
