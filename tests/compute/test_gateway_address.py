"""``gateway.address``: where casa's own clients reach the gateway, when that is not the host
the gateway runs on (on Kubernetes, its Service); by default the gateway's host, as before."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import dask_gateway
import pytest

from casa.compute.base import Scaling
from casa.compute.gateway import GatewayBackend, gateway_client
from casa.config import FacilityPaths, parse_config, tomllib
from casa.errors import ConfigError
from casa.facility import Facility

LAYOUTS = {
    # casa.toml: the host clients must reach the gateway at, and the host it runs on.
    "default": ("", "127.0.0.1", "127.0.0.1"),
    "site": ('[site]\nissuer = "head"\ngateway = "head"\nhub = "head"\n', "head", "head"),
    "address": (
        '[facility]\nhost = "casa.example.org"\n[gateway]\naddress = "casa-gateway"\n',
        "casa-gateway",
        "casa.example.org",
    ),
}


def _ctx(text: str, home: Path) -> Facility:
    return Facility(parse_config(tomllib.loads(text)), FacilityPaths(home))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gateway_client_connects_to_the_address(layout, tmp_path, monkeypatch):
    text, reached, runs_on = LAYOUTS[layout]
    ctx = _ctx(text, tmp_path)
    made: dict = {}
    monkeypatch.setattr(dask_gateway, "Gateway", lambda **kw: made.update(kw) or "gateway")
    assert gateway_client(ctx, token="a-gateway-token") == "gateway"
    web, tls = urlparse(made["address"]), urlparse(made["proxy_address"])
    g = ctx.config.gateway
    assert (web.scheme, web.hostname, web.port) == ("http", reached, g.port)
    assert (tls.scheme, tls.hostname, tls.port) == ("gateway", reached, g.scheduler_port)
    assert made["auth"].token == "a-gateway-token"
    # Where the gateway itself runs (and listens) is not changed by the address.
    assert ctx.config.host_of("gateway") == runs_on
    from casa.services.gateway.service import GatewayService

    assert GatewayService().hosts(ctx) == [runs_on]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_kept_connections_are_kept_by_the_address(layout, tmp_path, monkeypatch):
    text, reached, _ = LAYOUTS[layout]
    ctx = _ctx(text, tmp_path)
    asked = []

    class Taken(Exception):
        pass

    def take(key):
        asked.append(key)
        raise Taken

    monkeypatch.setattr("casa.compute.gateway.KEPT", SimpleNamespace(take=take))
    backend = GatewayBackend(ctx, Scaling(workers=1))
    with pytest.raises(Taken):
        backend.start(None)
    assert asked == [(reached, ctx.config.gateway.port, os.geteuid(), backend.worker_memory)]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_users_servers_are_sent_to_the_address(layout, tmp_path, monkeypatch):
    from jupyterhub.spawner import LocalProcessSpawner

    from casa.services.hub.spawner import CasaSpawner

    text, reached, _ = LAYOUTS[layout]
    (tmp_path / "casa.toml").write_text(text)
    monkeypatch.setattr(LocalProcessSpawner, "get_env", lambda self: {})  # JupyterHub's own
    spawner = CasaSpawner(casa_home=str(tmp_path))
    spawner.user = SimpleNamespace(name=pwd.getpwuid(os.geteuid()).pw_name)
    env = spawner.get_env()
    port, scheduler_port = 21080, 21081
    assert env["DASK_GATEWAY__ADDRESS"] == f"http://{reached}:{port}"
    assert env["DASK_GATEWAY__PUBLIC_ADDRESS"] == f"http://{reached}:{port}"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == f"gateway://{reached}:{scheduler_port}"


@pytest.mark.parametrize(
    "value", ["http://casa-gateway", "casa-gateway:21080", "casa gateway", " casa-gateway"]
)
def test_the_address_is_a_host_alone(value):
    with pytest.raises(ConfigError, match="gateway.address"):
        parse_config({"gateway": {"address": value}})


@pytest.mark.parametrize("value", ["casa-gateway", "casa-gateway.casa.svc", "10.0.0.5", "fd00::5"])
def test_names_and_addresses_are_hosts(value):
    assert parse_config({"gateway": {"address": value}}).gateway_client_host() == value
