"""The lab's Dask panel lists the user's gateway clusters, whoever made them.

dask-labextension's panel lists only the clusters its own server extension created (its
``DaskClusterManager`` keeps them in a dict), so a cluster made by ``casa.connect()``, by
``casa run --cluster gateway`` or by ``GatewayCluster()`` in a notebook was never shown, and
its NEW button made a cluster with no workers. :class:`GatewayPanel` takes the manager's
place: every listing asks the gateway for the user's running clusters (with the user's
gateway token, as every Dask Gateway client in the lab does) and connects to those it did
not know, NEW makes a gateway cluster of the lab's environment with two workers that
outlives the lab (the gateway's idle timeout ends it), and stopping a cluster in the panel
stops it on the gateway.

The panel's cluster ids must look like UUIDs (its URL patterns say so): a gateway cluster
named by a UUID's hex (every casa backend) gets that UUID, any other name a UUID made from it.
Written for dask-labextension 7.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from dataclasses import dataclass
from typing import Any

from dask_labextension.manager import DaskClusterManager, make_cluster, make_cluster_model

#: Workers of a cluster made by the panel's NEW (as a notebook's first cluster has).
NEW_CLUSTER_WORKERS = 2


@dataclass
class Adaptive:
    """The bounds the panel asked a cluster to adapt between (the gateway does the adapting)."""

    minimum: int
    maximum: int


def panel_id(name: str) -> str:
    """The panel's id of the gateway cluster ``name``."""
    try:
        return str(uuid.UUID(hex=name))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dask-gateway-cluster:{name}"))


def cluster_model(cluster_id: str, cluster: Any, adaptive: Adaptive | None = None) -> dict:
    """dask-labextension's model of a cluster, also while its first status is on the way."""
    try:
        return make_cluster_model(cluster_id, cluster.name, cluster, adaptive)
    except (KeyError, AttributeError, TypeError):
        return {
            "id": cluster_id, "name": cluster.name, "workers": 0, "cores": 0, "memory": "0 B",
            "scheduler_address": getattr(cluster, "scheduler_address", "") or "",
            "dashboard_link": getattr(cluster, "dashboard_link", "") or "",
        }  # fmt: skip


class GatewayPanel(DaskClusterManager):
    """The Dask panel's clusters: the caller's running gateway clusters."""

    def __init__(self) -> None:
        super().__init__()
        self._gateway: Any = None
        self._lock: asyncio.Lock | None = None

    def _the_gateway(self) -> Any:
        if self._gateway is None:
            from dask_gateway import Gateway

            # Address, proxy and the token file: the hub's DASK_GATEWAY__* settings.
            self._gateway = Gateway(asynchronous=True)
        return self._gateway

    async def refresh(self) -> None:
        """Follow the gateway: connect to the user's running clusters not known yet, and
        forget those that are gone."""
        from dask_gateway.client import ClusterStatus

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            gateway = self._the_gateway()
            reports = await gateway.list_clusters()
            running = {panel_id(r.name): r for r in reports if r.status == ClusterStatus.RUNNING}
            for cluster_id in [c for c in self._clusters if c not in running]:
                self._forget(cluster_id)
            for cluster_id, report in running.items():
                if cluster_id not in self._clusters:
                    with contextlib.suppress(Exception):  # stopped meanwhile: next time
                        cluster = await gateway.connect(report.name)
                        cluster.shutdown_on_close = False
                        self._keep(cluster_id, cluster)

    def _keep(self, cluster_id: str, cluster: Any) -> None:
        self._clusters[cluster_id] = cluster
        self._cluster_names[cluster_id] = cluster.name

    def _drop(self, cluster_id: str) -> Any:
        """No longer list the cluster; the cluster, or None."""
        self._cluster_names.pop(cluster_id, None)
        self._adaptives.pop(cluster_id, None)
        return self._clusters.pop(cluster_id, None)

    def _forget(self, cluster_id: str) -> None:
        """No longer list the cluster, and close this lab's connection to it (the cluster
        is gone, or stays)."""
        cluster = self._drop(cluster_id)
        if cluster is not None:
            asyncio.ensure_future(_quietly(cluster.close(shutdown=False)))

    async def start_cluster(self, cluster_id: str = "", configuration: dict | None = None):
        """NEW: a gateway cluster (the factory the hub configures) with two workers, which
        stays when the lab stops."""
        configuration = {"workers": NEW_CLUSTER_WORKERS, **(configuration or {})}
        cluster, adapting = await make_cluster(configuration)
        if inspect.isawaitable(adapting):  # an asynchronous GatewayCluster's adapt()
            await adapting
        cluster.shutdown_on_close = False
        cluster_id = panel_id(cluster.name)
        self._keep(cluster_id, cluster)
        if configuration.get("adapt"):
            self._adaptives[cluster_id] = Adaptive(**configuration["adapt"])
        return self.get_cluster(cluster_id)

    async def close_cluster(self, cluster_id: str):
        """Stop the cluster on the gateway (the panel's stop button)."""
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            return None
        model = cluster_model(cluster_id, cluster)
        await cluster.shutdown()
        self._drop(cluster_id)
        return model

    async def scale_cluster(self, cluster_id: str, n: int):
        """A fixed number of workers (the panel's SCALE)."""
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            return None
        self._adaptives.pop(cluster_id, None)
        await cluster.scale(n)
        return cluster_model(cluster_id, cluster)

    def adapt_cluster(self, cluster_id: str, minimum: int, maximum: int):
        """Adaptive between ``minimum`` and ``maximum`` workers (the gateway adapts)."""
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            return None
        asyncio.ensure_future(_quietly(cluster.adapt(minimum=minimum, maximum=maximum)))
        self._adaptives[cluster_id] = Adaptive(minimum, maximum)
        return {**cluster_model(cluster_id, cluster), "adapt": vars(self._adaptives[cluster_id])}

    def get_cluster(self, cluster_id: str):
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            return None
        return cluster_model(cluster_id, cluster, self._adaptives.get(cluster_id))

    def list_clusters(self):
        return [self.get_cluster(cluster_id) for cluster_id in list(self._clusters)]

    async def close(self) -> None:
        """The lab stops: its connections close, the clusters stay."""
        for cluster_id in list(self._clusters):
            self._forget(cluster_id)


async def _quietly(awaitable) -> None:
    with contextlib.suppress(Exception):
        await awaitable
