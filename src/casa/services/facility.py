"""The facility as a whole: its services, in start order, under one supervisor."""

from __future__ import annotations

import os
from pathlib import Path

from casa.config import facility_paths, load_config
from casa.errors import ConfigError
from casa.services.base import Service, ServiceContext
from casa.services.gateway import GatewayService
from casa.services.hub import HubService
from casa.services.issuer import IssuerService
from casa.services.supervisor import Supervisor
from casa.services.xrootd import CacheService, OriginService


def facility_services() -> list[Service]:
    """Every service, in the order they start (each depends only on those before it)."""
    return [IssuerService(), OriginService(), CacheService(), GatewayService(), HubService()]


def facility_context(
    home: str | os.PathLike | None = None, config_file: str | os.PathLike | None = None
) -> ServiceContext:
    """The configuration and paths of the facility chosen by ``--home``/``$CASA_HOME``."""
    paths = facility_paths(home).ensure()
    config = load_config(paths, config_file)
    return ServiceContext(config, paths, Path(config_file).absolute() if config_file else None)


def facility_supervisor(ctx: ServiceContext) -> Supervisor:
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


def elsewhere(ctx: ServiceContext) -> list[tuple[str, list[str]]]:
    """The services that run on other hosts of the site, with their hosts."""
    return [(s.name, s.hosts(ctx)) for s in facility_services() if not s.runs_here(ctx)]


def refusal_explainer(ctx: ServiceContext):
    """A function saying why this facility's storage refused a path to the caller's token."""
    from casa.auth.tokens import discover_token, explain_refusal

    try:
        pem = (ctx.paths.keys / "issuer.pub.pem").read_bytes()
    except OSError:  # a user's account may not enter keys/: explain without the signature
        pem = None

    def explain(path: str) -> str:
        return explain_refusal(
            discover_token(), path, issuer=ctx.config.issuer_url, public_key_pem=pem,
            audience=ctx.config.facility.name,
        )  # fmt: skip

    return explain
