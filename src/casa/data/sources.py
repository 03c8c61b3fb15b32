"""Where bytes come from: local files, or ``root://`` URLs read with the caller's token.

The token is looked up on the worker that opens the file, by WLCG bearer-token discovery,
and attached to the request as XRootD's ``authz`` opaque data. It never appears in the
catalog, in WorkItems or in summaries; error texts are scrubbed of it.
"""

from __future__ import annotations

import os
import re
import urllib.parse

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


class TokenXRootDSource(uproot.source.xrootd.XRootDSource):
    """uproot's XRootD source, presenting the token WLCG discovery finds on this worker."""

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
