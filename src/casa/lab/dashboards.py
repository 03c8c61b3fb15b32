"""Runs inside each user's notebook server: the lab's Dask panels show the user's gateway clusters.

The panel's list is the user's running gateway clusters (:mod:`casa.lab.dask_panel`, in
place of dask-labextension's own manager, asked again at every listing).

dask-labextension shows a cluster's dashboard through the notebook server
(``dask/dashboard/ID/PATH``, which JupyterHub lets only the server's owner and hub admins
reach) and forwards each request to the host and port of the cluster's dashboard link,
dropping the link's path. For a gateway cluster, whose link is
``http://GATEWAY/clusters/NAME/status``, that asked ``http://GATEWAY/PATH`` (a page that does
not exist), and the gateway lets only the owner in (:mod:`casa.services.gateway.dashboards`). This
extension makes those requests go to ``/clusters/NAME/PATH`` with the user's gateway token
(``$CASA_GATEWAY_TOKEN_FILE``, which the hub keeps fresh) and without the browser's cookies.

The hub enables it in every notebook server (``--ServerApp.jpserver_extensions``). Written
for dask-labextension 7.0 and jupyter-server-proxy 4.6.
"""

from __future__ import annotations

import contextlib
import os
from urllib.parse import urlparse

#: The name the hub enables this extension by.
EXTENSION = "casa.lab.dashboards"


def gateway_path(dashboard_link: str, proxied_path: str) -> str | None:
    """``/clusters/NAME`` + ``proxied_path`` for a gateway cluster's link, else None."""
    path = urlparse(dashboard_link).path
    if not path.startswith("/clusters/"):
        return None
    prefix = path.removesuffix("/status").rstrip("/")
    return prefix + "/" + proxied_path.lstrip("/")


def _gateway_token() -> str | None:
    """The user's gateway token, if the hub gave this server one."""
    from casa.compute.gateway import GATEWAY_TOKEN_FILE_ENV

    path = os.environ.get(GATEWAY_TOKEN_FILE_ENV)
    if not path:
        return None
    with open(path) as f:
        return f.read().strip()


def _install_panel():
    """The user's gateway clusters in the panel: :class:`~casa.lab.dask_panel.GatewayPanel`
    in place of dask-labextension's manager, asked again before every listing."""
    import dask_labextension.clusterhandler as clusters
    import dask_labextension.dashboardhandler as dashboards
    import dask_labextension.manager as managers
    from tornado import web

    from casa.lab.dask_panel import GatewayPanel

    if isinstance(managers.manager, GatewayPanel):
        return managers.manager
    panel = GatewayPanel()
    for module in (managers, clusters, dashboards):
        module.manager = panel
    listing = clusters.DaskClusterHandler.get

    @web.authenticated
    async def get(self, cluster_id: str = "") -> None:
        try:
            await panel.refresh()
        except Exception as e:  # the gateway is away: list what is known
            self.log.warning("casa: could not ask the gateway for the user's clusters: %s", e)
        return await listing(self, cluster_id)

    clusters.DaskClusterHandler.get = get
    return panel


def _patch_dashboard_handler(panel) -> None:
    from dask_labextension.dashboardhandler import DaskDashboardHandler
    from jupyter_server_proxy.handlers import ProxyHandler

    if getattr(DaskDashboardHandler, "_casa_gateway", False):
        return

    async def target(handler, cluster_id: str, proxied_path: str) -> tuple[str, int, str]:
        if panel.get_cluster(cluster_id) is None:  # made since the last listing
            with contextlib.suppress(Exception):
                await panel.refresh()
        host, port = handler._get_parsed(cluster_id)
        link = panel.get_cluster(cluster_id)["dashboard_link"]
        path = gateway_path(link, proxied_path)
        handler._casa_to_gateway = path is not None
        return host, port, path or proxied_path

    async def proxy(self, cluster_id, proxied_path):
        return await ProxyHandler.proxy(self, *await target(self, cluster_id, proxied_path))

    async def open_websocket(self, cluster_id, proxied_path):
        return await ProxyHandler.proxy_open(self, *await target(self, cluster_id, proxied_path))

    def proxy_request_headers(self):
        headers = ProxyHandler.proxy_request_headers(self)
        if getattr(self, "_casa_to_gateway", False):
            for name in ("Cookie", "Authorization"):
                headers.pop(name, None)
            token = _gateway_token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        return headers

    DaskDashboardHandler.proxy = proxy
    DaskDashboardHandler.open = open_websocket
    DaskDashboardHandler.proxy_request_headers = proxy_request_headers
    DaskDashboardHandler._casa_gateway = True


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The extension's entry point (Jupyter Server's discovery)."""
    return [{"module": EXTENSION}]


def _load_jupyter_server_extension(server_app) -> None:
    """The user's gateway clusters in the panel, their dashboards through the gateway."""
    _patch_dashboard_handler(_install_panel())
    server_app.log.info(
        "casa: the lab's Dask panel lists the user's gateway clusters; their dashboards go"
        " through the gateway"
    )
