"""Dask workers' data tokens, renewed while their cluster runs.

A worker finds its token by WLCG discovery (:func:`casa.auth.tokens.discover_token`), which
reads ``$BEARER_TOKEN`` first. A cluster's workers start with their owner's token; before it
expires, whoever holds the cluster's credentials registers :class:`WorkerToken` again with a
fresh one. The scheduler keeps the plugin and hands it to workers that join later; under the
same name each registration replaces the last.

- Gateway clusters: the gateway itself renews (:func:`push_to_scheduler`, from
  :mod:`casa.services.gateway.server`), for every backend (local, local-accounts, Slurm);
- clusters whose scheduler runs in the caller's process (HTCondor, dask-jobqueue Slurm):
  :class:`TokenRenewer`, a thread of that process, for as long as the cluster is open.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from casa.auth.tokens import unverified_claims
from casa.errors import CasaError

#: The plugin's name on schedulers and workers: registering again replaces it.
PLUGIN_NAME = "casa-data-token"

log = logging.getLogger(__name__)


class WorkerToken(WorkerPlugin):
    """A worker plugin that sets the worker's data token (``$BEARER_TOKEN``)."""

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, token: str):
        self.token = token

    def setup(self, worker: Any) -> None:
        """Make the token the one discovery finds in this worker process."""
        os.environ["BEARER_TOKEN"] = self.token

    def teardown(self, worker: Any) -> None:
        """Nothing to undo: the next registration sets its own token."""

    def __repr__(self) -> str:
        return "<WorkerToken>"  # never the token itself, in logs or dashboards


def renewal_period(lifetime: float) -> float:
    """Seconds between renewals: a third of a token's lifetime, so one failed renewal is
    survived, but not less than 5 s."""
    return max(5.0, lifetime / 3)


def expires_at(token: str) -> float:
    """The token's ``exp`` (0 when it has none or is not a JWT)."""
    try:
        return float(unverified_claims(token).get("exp") or 0)
    except (CasaError, TypeError, ValueError):
        return 0.0


def lifetime_of(token: str) -> float:
    """Seconds from the token's ``iat`` to its ``exp`` (0 when either is missing)."""
    try:
        claims = unverified_claims(token)
        return float(claims["exp"]) - float(claims["iat"])
    except (CasaError, KeyError, TypeError, ValueError):
        return 0.0


def push_to_client(client: Any, token: str) -> None:
    """Give ``token`` to every worker of ``client``'s cluster, present and future."""
    client.register_plugin(WorkerToken(token), name=PLUGIN_NAME)


async def push_to_scheduler(address: str, tls_cert: str, tls_key: str, token: str) -> None:
    """Give ``token`` to every worker of the scheduler at ``address``, present and future.

    ``tls_cert`` and ``tls_key`` are the cluster's own PEM credentials (dask-gateway signs
    every cluster's scheduler, workers and clients with one self-signed certificate).
    """
    from distributed.core import rpc
    from distributed.protocol.pickle import dumps
    from distributed.security import Security

    security = Security(
        tls_ca_file=tls_cert, tls_client_cert=tls_cert, tls_client_key=tls_key,
        require_encryption=True,
    )  # fmt: skip
    plugin = dumps(WorkerToken(token))
    async with rpc(address, connection_args=security.get_connection_args("client")) as s:
        answers = await s.register_worker_plugin(plugin=plugin, name=PLUGIN_NAME, idempotent=False)
    failed = [w for w, a in answers.items() if a.get("status") != "OK"]
    if failed:
        raise RuntimeError(f"{len(failed)} worker(s) could not take the renewed token")


class TokenRenewer:
    """Renews the workers' token of one client's cluster from a thread, until stopped.

    ``source`` returns the owner's current token; a token no newer than the last one given
    is not given again.
    """

    def __init__(self, client: Any, source: Callable[[], str | None], period: float):
        self.client = client
        self.source = source
        self.period = period
        self._given = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="casa-token-renewer", daemon=True)

    def __enter__(self) -> TokenRenewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def renew(self) -> bool:
        """Give the workers a newer token now, if there is one; True if given."""
        token = self.source()
        if not token or expires_at(token) <= max(self._given, time.time()):
            return False
        push_to_client(self.client, token)
        self._given = expires_at(token)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.renew()
            except Exception as e:  # the next period tries again; the run goes on
                log.warning("could not renew the workers' token: %s", type(e).__name__)


def file_token_source(path: str | os.PathLike) -> Callable[[], str | None]:
    """The token in ``path`` each time (whoever renews that file renews the workers')."""
    from pathlib import Path

    def source() -> str | None:
        try:
            return Path(path).read_text().strip() or None
        except OSError:
            return None

    return source


def caller_token_source(ctx: Any) -> Callable[[], str | None]:
    """The caller's own data token, freshly minted by the issuer; where the issuer cannot be
    reached, the token WLCG discovery finds now (a file the hub or a site renews)."""
    from casa.auth.tokens import discover_token

    def source() -> str | None:
        try:
            return ctx.request_token()
        except CasaError:
            found = discover_token()
            return found.token if found else None

    return source
