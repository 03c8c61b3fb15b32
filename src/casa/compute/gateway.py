"""Work on the caller's Dask Gateway cluster: create or reuse it, scale it, run coffea on it.

The caller's gateway credential is a facility token of audience ``NAME-gateway`` that the
issuer mints for the calling account on request, so no manual step is needed. The cluster's
workers receive the owner's data token from the gateway (see
:mod:`casa.services.gateway.server`), never the caller's local files.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dask_gateway.auth import GatewayAuth

from casa.compute.base import ComputeBackend, Scaling
from casa.compute.on_dask import DaskOpenBackend, on_dask_client
from casa.errors import ServiceError, UsageError
from casa.facility import Facility
from casa.workarounds import safe_gateway_close

WORKER_WAIT_SECONDS = 120
#: How long a printed dashboard link stays fresh (half the gateway's ticket lifetime).
DASHBOARD_LINK_SECONDS = 300


#: Where a notebook server finds its gateway token (set by the hub at spawn).
GATEWAY_TOKEN_FILE_ENV = "CASA_GATEWAY_TOKEN_FILE"


class CasaGatewayAuth(GatewayAuth):
    """dask-gateway client authentication with a facility gateway token."""

    def __init__(self, token: str):
        self.token = token

    def pre_request(self, resp):
        """Send the token as a Bearer credential."""
        return {"Authorization": f"Bearer {self.token}"}, None


class FileTokenAuth(GatewayAuth):
    """A gateway token read from a file at each request, so renewed tokens are picked up.

    The hub points ``gateway.auth.type`` at this class and ``$CASA_GATEWAY_TOKEN_FILE`` at
    the token it keeps fresh, so plain ``dask_gateway.Gateway()`` works in a notebook.
    """

    def __init__(self, path: str | None = None):
        self.path = path or os.environ.get(GATEWAY_TOKEN_FILE_ENV, "")
        if not self.path:
            raise ValueError(f"no gateway token file: set ${GATEWAY_TOKEN_FILE_ENV}")

    def pre_request(self, resp):
        """Send the file's current token as a Bearer credential."""
        with open(self.path) as f:
            return {"Authorization": f"Bearer {f.read().strip()}"}, None


def gateway_client(ctx: Facility, token: str | None = None):
    """A ``dask_gateway.Gateway`` for this facility, authenticated as the caller, at
    ``gateway.address`` (else the gateway's host)."""
    from dask_gateway import Gateway

    safe_gateway_close()
    if token is None:
        token = ctx.request_token(kind="gateway")
    auth = CasaGatewayAuth(token)
    g = ctx.config.gateway
    host = ctx.config.gateway_client_host()
    return Gateway(
        address=f"http://{host}:{g.port}",
        proxy_address=f"gateway://{host}:{g.scheduler_port}",
        auth=auth,
        asynchronous=False,
    )


def _raise_on_limit(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        text = str(w.message)
        if "exceed resource limit" in text:
            raise UsageError(f"the gateway refused: {text}")


def apply_scaling(cluster, scaling: Scaling) -> None:
    """Scale or adapt a gateway cluster; a request over a limit is a UsageError naming it.

    casa's gateway refuses such a request whole (no worker starts); a gateway that clamps
    it instead (dask-gateway's own behaviour) warns, and that is refused here too.
    """
    from dask_gateway.client import GatewayClusterError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if scaling.workers is not None:
                cluster.scale(scaling.workers)
            else:
                cluster.adapt(minimum=scaling.minimum, maximum=scaling.maximum)
        except GatewayClusterError as e:
            if not _is_limit_refusal(str(e)):
                raise  # such as a cluster that stopped meanwhile: the caller connects anew
            raise UsageError(f"the gateway refused: {e}") from None
    _raise_on_limit(caught)


def _is_limit_refusal(text: str) -> bool:
    """Whether the gateway's answer is a refusal over a limit (casa's UserLimits)."""
    return "exceed" in text and "limit" in text


def caller_environment() -> str:
    """This process's Python environment, which its clusters' schedulers and workers run
    from (the gateway's ``python_env`` option): a virtual environment with Dask's commands
    (the facility's, or a user's own with the packages they installed:
    :mod:`casa.lab.environments`), else ``""``, the facility's."""
    prefix = Path(sys.prefix)
    if (prefix / "pyvenv.cfg").exists() and (prefix / "bin" / "dask-worker").exists():
        return str(prefix)
    return ""


def environment_option(gateway, env: str | None = None) -> dict[str, str]:
    """``{"python_env": ...}`` for a new cluster of this process's environment (or of
    ``env``), if the gateway offers that option (one whose workers are no local processes,
    such as Kubernetes pods running an image, does not); else ``{}``."""
    env = caller_environment() if env is None else env
    if env and "python_env" in gateway.cluster_options(use_local_defaults=False):
        return {"python_env": env}
    return {}


def find_or_create_cluster(
    gateway, worker_cores: int = 1, worker_memory: float = 2.0, say=lambda text: None,
    env: str | None = None,
):  # fmt: skip
    """The caller's first running cluster of its own Python environment (or of ``env``), or
    a new one (``cluster.casa_created`` says which): workers import what the caller can.
    ``say`` is told which, in a few words."""
    from dask_gateway.client import GatewayClusterError

    env = caller_environment() if env is None else env
    for report in gateway.list_clusters():
        theirs = dict(report.options or {}).get("python_env") or ""
        if env and theirs and theirs != env:
            continue  # another environment's cluster: its workers lack this one's packages
        say(f"connecting to your cluster {report.name}")
        cluster = gateway.connect(report.name)
        cluster.casa_created = False
        return cluster
    try:
        say("starting a new cluster on the gateway")
        cluster = gateway.new_cluster(
            worker_cores=worker_cores, worker_memory=worker_memory, shutdown_on_close=False,
            **environment_option(gateway, env),
        )  # fmt: skip
        cluster.casa_created = True
        return cluster
    except (GatewayClusterError, ValueError) as e:
        raise UsageError(f"the gateway refused a new cluster: {e}") from None
    except Exception as e:
        if "Unprocessable" in str(e) or "422" in str(e):
            raise UsageError(f"the gateway refused a new cluster: {e}") from None
        raise


class GatewayBackend(ComputeBackend):
    """coffea's DaskExecutor on the caller's Dask Gateway cluster (reused between runs)."""

    name = "gateway"
    ships_analysis_folder = True
    options = ("worker_memory",)
    adaptive = True
    callers_token = False  # the gateway gives each cluster its owner's token

    def __init__(
        self, facility: Facility | None = None, size: Scaling | None = None, *,
        worker_memory: float = 2.0,
    ):  # fmt: skip
        super().__init__(facility, size)
        self.ctx = self._needs_facility()
        self.worker_memory = worker_memory

    def default_workers(self) -> int:
        """Two: a notebook's first cluster, small enough for any facility's limits."""
        return 2

    def start(self, stack: contextlib.ExitStack) -> DaskOpenBackend:
        """Connect to (or create) the cluster, scale it, wait for its workers.

        The connection stays open for the next run in this process (a notebook's runs
        follow each other on one cluster): reconnecting costs about 40 ms a run here.
        """
        g = self.ctx.config.gateway
        key = (self.ctx.config.gateway_client_host(), g.port, os.geteuid(), self.worker_memory)
        conn = KEPT.take(key)
        if conn is not None:
            try:
                apply_scaling(conn.cluster, self.size)
            except UsageError:
                KEPT.give_back(key, conn)
                raise
            except Exception:  # the cluster or the gateway went away: connect afresh
                conn.close()
                conn = None
        if conn is None:
            conn = self._connect()
        stack.callback(lambda: KEPT.give_back(key, conn) if conn.usable() else conn.close())
        self._wait_for_workers(conn)
        return on_dask_client(conn.client, f"gateway:{conn.cluster.name}", conn.dashboard_link())

    def _wait_for_workers(self, conn: _Connection) -> None:
        """Until the cluster has the workers the run waits for, saying "k of n workers
        ready" as they come; ServiceError after WORKER_WAIT_SECONDS."""
        wanted = self.size.wait_for
        deadline = time.monotonic() + WORKER_WAIT_SECONDS
        said = None
        while True:
            workers = conn.client.scheduler_info().get("workers", {}).values()
            ready = sum(1 for w in workers if w.get("status", "running") == "running")
            if ready >= wanted:
                return
            if ready != said:
                self.say(f"cluster {conn.cluster.name}: {ready} of {wanted} workers ready")
                said = ready
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"cluster {conn.cluster.name} did not get {wanted} worker(s) within "
                    f"{WORKER_WAIT_SECONDS} s; see 'casa cluster list' and 'casa cluster "
                    f"logs {conn.cluster.name}'"
                )
            time.sleep(0.2)

    def _connect(self) -> _Connection:
        self.say("connecting to the gateway")
        gateway = gateway_client(self.ctx)
        try:
            try:
                cluster = find_or_create_cluster(
                    gateway, worker_memory=self.worker_memory, say=self.say
                )
            except OSError as e:
                raise ServiceError(
                    f"cannot reach the gateway at {gateway.address}: {e}; is the facility up "
                    "('casa status')?"
                ) from None
            try:
                apply_scaling(cluster, self.size)
                with warnings.catch_warnings():
                    # casa and the cluster come from one pyproject (same packages), but may
                    # run on different Python patch releases (casa's venv and the users'
                    # Debian one).
                    warnings.filterwarnings("ignore", message="Mismatched versions found")
                    client = cluster.get_client(set_as_default=False)
                if not cluster.casa_created:
                    refresh_worker_token(self.ctx, client)
            except BaseException:
                # A cluster this request made goes with it (a refused scale leaves nothing).
                cluster.close(shutdown=cluster.casa_created)
                raise
        except BaseException:
            gateway.close()
            raise
        return _Connection(gateway, cluster, client, linked_at=time.monotonic())


def refresh_worker_token(ctx: Facility, client) -> None:
    """Give a reused cluster's workers their owner's token, freshly minted.

    The gateway renews it on its own schedule; a run connecting anew does not depend on
    that (a gateway that was down, say, for longer than a token lives).
    """
    from casa.worker.token import push_to_client

    push_to_client(client, ctx.request_token())


@dataclass
class _Connection:
    """A gateway, the caller's cluster on it and a client of the cluster."""

    gateway: Any
    cluster: Any
    client: Any
    linked_at: float = 0.0

    def dashboard_link(self) -> str | None:
        """The cluster's dashboard link, asked again once half its ticket's time is gone.

        The gateway signs each link for the cluster's owner; it opens the dashboard for
        ``dashboard_ticket_seconds`` (see :mod:`casa.services.gateway.dashboards`).
        """
        if time.monotonic() - self.linked_at > DASHBOARD_LINK_SECONDS:
            with contextlib.suppress(Exception):
                report = self.gateway.get_cluster(self.cluster.name)
                self.cluster.dashboard_link = report.dashboard_link
            self.linked_at = time.monotonic()
        return self.cluster.dashboard_link

    def usable(self) -> bool:
        """Whether the client is still connected to the cluster's scheduler."""
        return self.client.status == "running"

    def close(self) -> None:
        """Disconnect; the cluster keeps running."""
        for close in (self.client.close, lambda: self.cluster.close(shutdown=False)):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(Exception):
            self.gateway.close()


class _KeptConnections:
    """Connections to gateway clusters kept between runs in this process, one per key.

    A run takes its connection out while it runs, so concurrent runs never share one;
    all are closed when the process exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple, _Connection] = {}
        atexit.register(self.close_all)

    def take(self, key: tuple) -> _Connection | None:
        """The idle connection for ``key``, if it is still connected."""
        with self._lock:
            conn = self._idle.pop(key, None)
        if conn is not None and not conn.usable():
            conn.close()
            return None
        return conn

    def give_back(self, key: tuple, conn: _Connection) -> None:
        """Keep ``conn`` for the next run (closed if another is kept for ``key`` already)."""
        with self._lock:
            other = self._idle.setdefault(key, conn)
        if other is not conn:
            conn.close()

    def idle(self) -> list[_Connection]:
        """The connections kept now (none of them in use)."""
        with self._lock:
            return list(self._idle.values())

    def close_all(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for conn in idle:
            conn.close()


#: This process's kept connections (:meth:`GatewayBackend.open`).
KEPT = _KeptConnections()


def close_kept_connections() -> None:
    """Close the connections this process kept to gateway clusters (before stopping them)."""
    KEPT.close_all()
