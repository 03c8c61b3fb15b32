"""casa's Kubernetes backend inside ``dask-gateway-server`` (deploy/kubernetes).

Loaded by name from the Kubernetes gateway's configuration
(``deploy/kubernetes/base/gateway/dask_gateway_config.py``); it needs dask-gateway's
Kubernetes extra (``kubernetes_asyncio``), which only that gateway's image installs.
"""

from __future__ import annotations

from dask_gateway_server.backends.kubernetes import KubeBackend

from casa.services.gateway.server import OwnerDataToken


class CasaKubeBackend(OwnerDataToken, KubeBackend):
    """dask-gateway's KubeBackend; each cluster gets its owner's data token, minted off the
    event loop by the issuer container beside the gateway."""
