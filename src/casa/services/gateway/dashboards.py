"""Cluster dashboards through the gateway, for their owner and the facility's admins only.

dask-gateway routes ``/clusters/NAME/`` on its proxy straight to the scheduler's dashboard,
which answers anyone. :class:`DashboardAccess` (part of casa's gateway backends) adds no such
route: the proxy passes ``/clusters/NAME/...`` to the gateway's own web app, where
:meth:`DashboardAccess.dashboard` checks who asks and then forwards the request (HTTP and
websocket) to the scheduler with the cluster's key, without which every HTTP server of the
cluster's processes answers 403 (:mod:`casa.worker.dashboard_guard`).

Who asks is known from one of:

- a ticket in the cluster's dashboard link (``?casa_ticket=``): every cluster the gateway's
  API reports to its owner (``casa run``, ``casa cluster list``, ``cluster.dashboard_link``
  in a notebook) carries a fresh one, signed for that cluster and its owner and valid for
  ``dashboard_ticket_seconds``; a page opened with it also sets
- a session cookie (HttpOnly, for ``/clusters/NAME/`` only) valid for
  ``dashboard_session_seconds``, which the dashboard's own pages and websockets then use;
- a gateway token (``Authorization: Bearer``), for API clients.

Tickets and cookies are signed with a key the gateway draws when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from functools import partial

import aiohttp
from aiohttp import web
from dask_gateway_server.backends.db_base import DBBackendBase, JobStatus
from dask_gateway_server.models import Cluster
from traitlets import Integer, Unicode

from casa.worker.dashboard_guard import GUARD_MODULE, KEY_HEADER, WORKER_ARGS

TICKET_PARAM = "casa_ticket"
SESSION_COOKIE = "casa-dashboard"

# Per-hop headers (RFC 9110 7.6.1) and what the gateway itself decides.
NOT_FORWARDED = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "cookie", "authorization",
    KEY_HEADER.lower(),
}  # fmt: skip


_REFUSALS = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound}


def refused(status: int, reason: str) -> web.HTTPException:
    """A 401, 403 or 404 answer whose body is one sentence saying why."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _REFUSALS[status](text=reason + "\n", headers=headers)


class TicketedCluster(Cluster):
    """dask-gateway's cluster report whose dashboard link carries the owner's ticket."""

    dashboard_ticket = ""

    def to_dict(self, full=True):
        """As dask-gateway's, with ``?casa_ticket=`` on ``dashboard_route``."""
        out = super().to_dict(full)
        if out["dashboard_route"] and self.dashboard_ticket:
            out["dashboard_route"] += f"?{TICKET_PARAM}={self.dashboard_ticket}"
        return out


class DashboardAccess(DBBackendBase):
    """A gateway backend whose cluster dashboards answer their owner and admins only."""

    dashboard_ticket_seconds = Integer(
        600, help="How long the dashboard link casa prints can be opened.", config=True
    )
    dashboard_session_seconds = Integer(
        12 * 3600, help="How long a browser that opened the link stays let in.", config=True
    )
    accounts_database = Unicode(
        "", help="The facility's accounts (SQLite): its admins see every dashboard.", config=True
    )

    def get_scheduler_command(self, cluster):
        """dask-gateway's scheduler command, its HTTP server guarded by the cluster's key."""
        return super().get_scheduler_command(cluster) + ["--preload", GUARD_MODULE]

    def get_worker_command(self, cluster, worker_name, scheduler_address=None):
        """dask-gateway's worker command: no dashboard (the scheduler's shows every worker)
        and its remaining HTTP server (``/metrics``, ``/health``) guarded by the key."""
        cmd = super().get_worker_command(cluster, worker_name, scheduler_address)
        return cmd + WORKER_ARGS

    async def list_clusters(self, username=None, statuses=None):
        """dask-gateway's cluster reports, their dashboard links with a fresh ticket."""
        return [self._ticketed(c) for c in await super().list_clusters(username, statuses)]

    async def get_cluster(self, cluster_name, wait=False):
        """dask-gateway's cluster report, its dashboard link with a fresh ticket."""
        return self._ticketed(await super().get_cluster(cluster_name, wait=wait))

    def _ticketed(self, model):
        # The API reports a cluster to its owner only (dask-gateway's routes check).
        if model is not None and model.dashboard_address:
            expiry = int(time.time()) + self.dashboard_ticket_seconds
            model.dashboard_ticket = self._sign("ticket", model.name, model.username, expiry)
            model.__class__ = TicketedCluster
        return model

    async def setup(self, app):
        """Add the dashboard routes to the gateway's web app."""
        await super().setup(app)
        self._dashboard_secret = secrets.token_bytes(32)
        self._dashboard_http = None
        app.router.add_route("*", "/clusters/{cluster_name}/{path:.*}", self.dashboard)

    async def cleanup(self):
        """Close the dashboards' HTTP client, then clean up as dask-gateway does."""
        if getattr(self, "_dashboard_http", None) is not None:
            await self._dashboard_http.close()
        await super().cleanup()

    async def _check_cluster_proxied(self, cluster):
        """Route the cluster's TLS (SNI) on the proxy, but not its dashboard: the proxy's
        default route brings ``/clusters/NAME/`` to :meth:`dashboard`."""
        if not cluster.added_to_proxies:
            self.log.info("Adding cluster %s route to the proxy", cluster.name)
            await self.proxy.add_route(
                kind="SNI", sni=cluster.name, target=cluster.scheduler_address
            )
            cluster.added_to_proxies = True

    # Credentials

    def _sign(self, kind: str, cluster_name: str, username: str, expiry: int) -> str:
        message = f"{kind}|{cluster_name}|{username}|{expiry}".encode()
        sig = hmac.new(self._dashboard_secret, message, hashlib.sha256).hexdigest()
        return f"{username}:{expiry}:{sig}"

    def _signed_user(self, kind: str, cluster_name: str, value: str | None) -> str | None:
        """The user a ticket or cookie was signed for, if it is genuine and unexpired."""
        username, _, rest = (value or "").partition(":")
        expiry, _, _ = rest.partition(":")
        if not username or not expiry.isdigit() or int(expiry) < time.time():
            return None
        expected = self._sign(kind, cluster_name, username, int(expiry))
        return username if hmac.compare_digest(expected.encode(), value.encode()) else None

    def _is_admin(self, username: str) -> bool:
        if not self.accounts_database:
            return False
        from pathlib import Path

        from casa.auth.accounts import AccountStore

        account = AccountStore(Path(self.accounts_database)).get(username)
        return bool(account and account.admin)

    async def _token_user(self, request) -> tuple[str, bool] | None:
        """The user and admin flag of a valid gateway token in the request, if it has one."""
        if "Authorization" not in request.headers:
            return None
        try:
            user = await request.app["authenticator"].authenticate(request)
        except web.HTTPUnauthorized:
            raise refused(401, "the gateway token sent is not valid") from None
        user = user[0] if isinstance(user, tuple) else user
        return user.name, user.admin

    def _owned_cluster(self, cluster_name: str, username: str, admin: bool):
        """The running cluster if ``username`` may see it; 403 or 404 otherwise."""
        cluster = self.db.get_cluster(cluster_name)
        if cluster is None or cluster.status != JobStatus.RUNNING:
            raise refused(404, f"no running cluster named {cluster_name}")
        if cluster.username != username and not (admin or self._is_admin(username)):
            raise refused(
                403, f"cluster {cluster_name} is not yours: a dashboard answers its owner only"
            )
        return cluster

    # Routes

    async def dashboard(self, request):
        """``/clusters/NAME/PATH``: the cluster's dashboard, for its owner and admins only."""
        name = request.match_info["cluster_name"]
        ticket = request.query.get(TICKET_PARAM)
        who = self._ticket_user(name, ticket) if ticket is not None else None
        who = who or await self._token_user(request)
        if who is None:
            username = self._signed_user("session", name, request.cookies.get(SESSION_COOKIE))
            if username is None:
                raise refused(
                    401,
                    f"the dashboard of cluster {name} answers its owner only: open the link "
                    "'casa cluster list' shows you, or send your gateway token",
                )
            who = (username, False)
        cluster = self._owned_cluster(name, *who)
        target = cluster.dashboard_address.rstrip("/") + "/" + request.match_info["path"]
        query = {k: v for k, v in request.query.items() if k != TICKET_PARAM}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._forward_websocket(request, target, query, cluster.token)
        cookie = partial(self._session_cookie, name=name, username=who[0]) if ticket else None
        return await self._forward_http(request, target, query, cluster.token, cookie)

    def _ticket_user(self, name: str, ticket: str) -> tuple[str, bool]:
        """The user a genuine, unexpired ticket for cluster ``name`` was given to."""
        username = self._signed_user("ticket", name, ticket)
        if username is None:
            raise refused(
                401,
                f"this dashboard link of cluster {name} has expired or is not genuine: run "
                "'casa cluster list' for a fresh one",
            )
        return username, False

    def _session_cookie(self, response, name: str, username: str) -> None:
        expiry = int(time.time()) + self.dashboard_session_seconds
        response.set_cookie(
            SESSION_COOKIE, self._sign("session", name, username, expiry),
            path=f"/clusters/{name}/", max_age=self.dashboard_session_seconds,
            httponly=True, samesite="Lax",
        )  # fmt: skip

    # Forwarding

    def _http(self) -> aiohttp.ClientSession:
        if self._dashboard_http is None:
            self._dashboard_http = aiohttp.ClientSession(auto_decompress=False)
        return self._dashboard_http

    async def _forward_http(self, request, target: str, query, key: str, set_cookie=None):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        headers[KEY_HEADER] = key
        body = await request.read() if request.can_read_body else None
        async with self._http().request(
            request.method, target, params=query, headers=headers, data=body,
            allow_redirects=False,
        ) as upstream:  # fmt: skip
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() in NOT_FORWARDED or k.lower() == "set-cookie":
                    continue
                if k.lower() == "location" and v.startswith("/"):
                    v = request.path[: -len(request.match_info["path"]) - 1] + v
                response.headers.add(k, v)
            if set_cookie is not None:
                set_cookie(response)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _forward_websocket(self, request, target: str, query, key: str):
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        ]
        headers = {KEY_HEADER: key}
        if "Origin" in request.headers:
            headers["Origin"] = request.headers["Origin"]
        async with self._http().ws_connect(
            target, params=query, headers=headers, max_msg_size=0,
            protocols=[p for p in protocols if p],
        ) as upstream:  # fmt: skip
            browser = web.WebSocketResponse(
                protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=0
            )
            await browser.prepare(request)
            pumps = [
                asyncio.ensure_future(_pump(upstream, browser)),
                asyncio.ensure_future(_pump(browser, upstream)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            with contextlib.suppress(Exception):
                await browser.close()
            return browser


async def _pump(source, sink) -> None:
    """Copy websocket messages from ``source`` to ``sink`` until either closes."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break
