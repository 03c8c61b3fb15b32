"""Inside Dask schedulers and workers: their HTTP servers answer only holders of the cluster's key.

Every HTTP server of a scheduler or worker (dashboard, ``/metrics``, ``/json/...``,
``/info/...``, ``/api/...``, ``/proxy/...``) answers 403 to a request without the cluster's
key, given in the header :data:`KEY_HEADER` or in a browser's cookie.

- Gateway clusters: the gateway passes ``--preload casa.worker.dashboard_preload`` to
  every scheduler and worker it starts, which installs the guard there. The key is the
  cluster's API token (``$DASK_GATEWAY_API_TOKEN``: only the gateway and the cluster's
  processes hold it); the gateway adds the header once it has checked that whoever asks
  is the owner or an admin (:mod:`casa.services.gateway.dashboards`).
- Clusters casa starts from the user's own process (local Dask, Slurm, HTCondor):
  :func:`guard_this_process` draws a key, every ``dashboard_link`` of the process (the
  link casa prints) carries it once (``?casa_key=``), the browser keeps it in a cookie
  for that port, and the workers get :data:`WORKER_ARGS`.

Written for distributed 2025.3 (every HTTP server of a scheduler or worker is a
``distributed.http.routing.RoutingApplication``, bokeh's pages included).
"""

from __future__ import annotations

import hmac
import os
import secrets
from urllib.parse import urlencode

KEY_HEADER = "X-Casa-Dashboard-Key"
#: A gateway cluster's key: its API token, which dask-gateway gives the cluster's processes.
GATEWAY_KEY_ENV = "DASK_GATEWAY_API_TOKEN"
#: The key of a cluster casa starts itself (local Dask, Slurm, HTCondor): drawn per process.
OWN_KEY_ENV = "CASA_DASHBOARD_KEY"
#: A browser brings the key once in the link casa prints, then in a cookie.
KEY_PARAM = "casa_key"
KEY_COOKIE = "casa-dashboard-key"
#: The preload module that installs the guard in a scheduler or worker.
GUARD_MODULE = "casa.worker.dashboard_preload"
#: ``dask-worker`` arguments: no dashboard (the scheduler's shows every worker), and the
#: worker's remaining HTTP server (``/metrics``, ``/health``) guarded.
WORKER_ARGS = ["--no-dashboard", "--preload", GUARD_MODULE]


def cluster_key() -> bytes:
    """This process's cluster key (the gateway's variable may name a file); empty if none."""
    key = os.environ.get(OWN_KEY_ENV) or os.environ.get(GATEWAY_KEY_ENV, "")
    if "/" in key:
        with open(key) as f:
            key = f.read()
    return key.strip().encode()


def is_key(given: str | None) -> bool:
    """Whether ``given`` is the cluster's key (never true without one)."""
    key = cluster_key()
    return bool(key) and hmac.compare_digest((given or "").encode(), key)


def _cookie_name(request) -> str:
    # Browsers send a host's cookies to all of its ports: one name per port.
    port = request.host.rpartition(":")[2]
    return f"{KEY_COOKIE}-{port}" if port.isdigit() else KEY_COOKIE


def request_allowed(request) -> bool:
    """Whether a request carries the key, in :data:`KEY_HEADER` or the browser's cookie."""
    cookie = request.cookies.get(_cookie_name(request))
    return is_key(request.headers.get(KEY_HEADER)) or is_key(cookie.value if cookie else None)


def guard_http_servers() -> None:
    """Make every RoutingApplication of this process refuse requests without the key."""
    from distributed.http.routing import RoutingApplication
    from tornado import web

    if getattr(RoutingApplication.find_handler, "_casa_guarded", False):
        return
    unguarded = RoutingApplication.find_handler

    class KeyToCookie(web.RequestHandler):
        """The link casa printed: keep its key in a cookie, reload the page without it."""

        def get(self, *args):
            self.set_cookie(
                _cookie_name(self.request), self.get_query_argument(KEY_PARAM),
                httponly=True, samesite="Strict",
            )  # fmt: skip
            kept = [(k, v.decode()) for k, vs in self.request.query_arguments.items()
                    if k != KEY_PARAM for v in vs]  # fmt: skip
            self.redirect(self.request.path + ("?" + urlencode(kept) if kept else ""))

    def find_handler(self, request, **kwargs):
        if request_allowed(request):
            return unguarded(self, request, **kwargs)
        if request.method == "GET" and is_key(_query_key(request)):
            return self.get_handler_delegate(request, KeyToCookie)
        return self.get_handler_delegate(request, web.ErrorHandler, {"status_code": 403})

    find_handler._casa_guarded = True
    RoutingApplication.find_handler = find_handler


def _query_key(request) -> str | None:
    values = request.query_arguments.get(KEY_PARAM)
    return values[0].decode() if values else None


def guard_this_process() -> str:
    """Guard the HTTP servers of this process and of the workers it starts; their key.

    For clusters casa starts itself: call it before the cluster's scheduler starts and give
    the workers ``--preload`` :data:`GUARD_MODULE` (they inherit the key's variable). Every
    ``dashboard_link`` distributed makes in this process then carries the key.
    """
    import dask

    if not os.environ.get(OWN_KEY_ENV):
        os.environ[OWN_KEY_ENV] = secrets.token_urlsafe(32)
    guard_http_servers()
    link = dask.config.get("distributed.dashboard.link")
    if KEY_PARAM not in link:
        # distributed fills the template from os.environ (distributed.utils.format_dashboard_link)
        keyed = f"{link}{'&' if '?' in link else '?'}{KEY_PARAM}={{{OWN_KEY_ENV}}}"
        dask.config.set({"distributed.dashboard.link": keyed})
    return os.environ[OWN_KEY_ENV]
