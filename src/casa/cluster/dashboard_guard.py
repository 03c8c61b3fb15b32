"""Runs inside each gateway cluster's scheduler and workers: their HTTP servers answer the gateway only.

The gateway passes ``--preload casa.cluster.dashboard_guard`` to every scheduler and worker
it starts. distributed imports preload modules while it parses the command line, before the
process opens its HTTP port (dashboard, ``/metrics``, ``/json/...``, ``/info/...``,
``/proxy/...``), and importing this module makes every request to every HTTP server of the
process carry the header :data:`KEY_HEADER` with the cluster's own API token
(``$DASK_GATEWAY_API_TOKEN``, which only the gateway and the cluster's processes hold);
anything else gets 403. The gateway adds the header after it has checked that the browser
or client asking is the cluster's owner or an admin (:mod:`casa.cluster.dashboard`).

Written for distributed 2025.3 (every HTTP server of a scheduler or worker is a
``distributed.http.routing.RoutingApplication``, bokeh's pages included).
"""

from __future__ import annotations

import functools
import hmac
import os

KEY_HEADER = "X-Casa-Dashboard-Key"
KEY_ENV = "DASK_GATEWAY_API_TOKEN"


@functools.cache
def cluster_key() -> bytes:
    """The cluster's API token (the variable may name a file holding it); empty if unset."""
    token = os.environ.get(KEY_ENV, "")
    if "/" in token:
        with open(token) as f:
            token = f.read()
    return token.strip().encode()


def request_allowed(given: str | None) -> bool:
    """Whether a request's :data:`KEY_HEADER` value is the cluster's key (never without one)."""
    key = cluster_key()
    return bool(key) and hmac.compare_digest((given or "").encode(), key)


def guard_http_servers() -> None:
    """Make every RoutingApplication of this process refuse requests without the key."""
    from distributed.http.routing import RoutingApplication
    from tornado import web

    if getattr(RoutingApplication.find_handler, "_casa_guarded", False):
        return
    unguarded = RoutingApplication.find_handler

    def find_handler(self, request, **kwargs):
        if not request_allowed(request.headers.get(KEY_HEADER)):
            return self.get_handler_delegate(request, web.ErrorHandler, {"status_code": 403})
        return unguarded(self, request, **kwargs)

    find_handler._casa_guarded = True
    RoutingApplication.find_handler = find_handler


# On import, not in dask_setup: a scheduler opens its HTTP port before preloads' dask_setup.
guard_http_servers()


def dask_setup(server) -> None:
    """Nothing left to do: the guard is in place since this module was imported."""
