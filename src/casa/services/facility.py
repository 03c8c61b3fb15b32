"""The facility as a whole: its services, in start order, under one supervisor."""

from __future__ import annotations

from casa.errors import ConfigError
from casa.facility import Facility
from casa.services.base import Service
from casa.services.delivery.service import DeliveryService
from casa.services.gateway.service import GatewayService
from casa.services.hub.service import HubService
from casa.services.issuer.service import IssuerService
from casa.services.s3.service import ObjectStoreService
from casa.services.supervisor import Supervisor
from casa.services.xrootd.service import CacheService, OriginService


def facility_services() -> list[Service]:
    """Every service, in the order they start (each depends only on those before it)."""
    return [
        IssuerService(), OriginService(), CacheService(), GatewayService(),
        ObjectStoreService(), DeliveryService(), HubService(),
    ]  # fmt: skip


def facility_supervisor(ctx: Facility) -> Supervisor:
    """A supervisor for the facility's services that run on this host (``[site]``)."""
    here = [s for s in facility_services() if s.runs_here(ctx)]
    if not here:
        layout = ", ".join(f"{s.name} on {' and '.join(s.hosts(ctx))}" for s in facility_services())
        raise ConfigError(
            f"no service of this facility runs on this host: the site layout in casa.toml puts "
            f"{layout}, and none of those addresses is this machine's; run casa on one of those "
            "hosts or change [site]"
        )
    return Supervisor(ctx, here)


def elsewhere(ctx: Facility) -> list[tuple[str, list[str]]]:
    """The services that run on other hosts of the site, with their hosts."""
    return [(s.name, s.hosts(ctx)) for s in facility_services() if not s.runs_here(ctx)]
