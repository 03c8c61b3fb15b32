"""The delivery service as a facility service, and its process.

``python -m casa.services.delivery.service --home H`` serves the ServiceX API
(:mod:`casa.services.delivery.api`) on ``delivery.port``; its transforms run on each
asking user's own Dask cluster (:mod:`casa.services.delivery.transforms`) and their results
go to the object store (:mod:`casa.services.s3`). Its state is
``services/delivery``: ``delivery.sqlite``, the shared cache's files (``cache/``) and the
key that signs download URLs (``url.key``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from casa.facility import Facility, facility_context
from casa.services.base import Health, Service, casa_module_command, get_json


def delivery_url(ctx: Facility) -> str:
    """The URL the ServiceX client is given (``servicex.yaml``'s endpoint)."""
    return f"http://{ctx.config.host_of('delivery')}:{ctx.config.delivery.port}"


class DeliveryService(Service):
    """The ServiceX-compatible delivery service."""

    name = "delivery"

    def port(self, ctx: Facility) -> int:
        """``delivery.port``."""
        return ctx.config.delivery.port

    def url(self, ctx: Facility) -> str:
        """The ServiceX endpoint (for ``servicex.yaml``)."""
        return delivery_url(ctx)

    def prepare(self, ctx: Facility) -> None:
        """Its state folder, private to the facility's account."""
        ctx.service_dir(self.name).mkdir(parents=True, exist_ok=True)

    def command(self, ctx: Facility) -> list[str]:
        """This module, run by the same Python as casa."""
        return casa_module_command(ctx, "casa.services.delivery.service")

    def health(self, ctx: Facility) -> Health:
        """GET /servicex answers with the uproot-raw code generator."""
        url = f"http://{self.host(ctx)}:{self.port(ctx)}/servicex"
        body, failed = get_json(url)
        if failed:
            return failed
        if "uproot-raw" not in (body.get("code-gen-image") or {}):
            return Health(False, f"{url} is not casa's delivery service")
        return Health(True, "answers the ServiceX API")


def main() -> None:
    """Entry point of the delivery process."""
    from aiohttp import web

    from casa.config import parse_size
    from casa.services.delivery.api import DeliveryAPI
    from casa.services.delivery.cache import ResultCache
    from casa.services.delivery.downloads import UrlSigner
    from casa.services.delivery.records import DeliveryRecords
    from casa.services.delivery.transforms import Engine, UserClusters
    from casa.services.s3.service import object_store, object_store_endpoint

    parser = argparse.ArgumentParser(prog="casa-delivery")
    parser.add_argument("--home", required=True)
    parser.add_argument("--config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s delivery %(levelname)s %(message)s")  # fmt: skip
    ctx = facility_context(args.home, args.config)
    folder = ctx.service_dir("delivery")
    records = DeliveryRecords(folder / "delivery.sqlite")
    cache = ResultCache(folder / "cache", records, parse_size(ctx.config.delivery.cache_size))
    store = object_store(ctx).ensure()
    clusters = UserClusters(ctx, ctx.config.delivery.workers)
    engine = Engine(ctx, records, store, cache, clusters)
    engine.resume_unfinished()
    api = DeliveryAPI(ctx, records, engine, store, object_store_endpoint(ctx),
                      (ctx.paths.keys / "issuer.pub.pem").read_bytes(),
                      UrlSigner(folder / "url.key", delivery_url(ctx)))  # fmt: skip

    async def serve() -> None:
        runner = web.AppRunner(api.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, ctx.config.host_of("delivery"), ctx.config.delivery.port)
        await site.start()
        sys.stderr.write(f"delivery ready on {delivery_url(ctx)}\n")
        sys.stderr.flush()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        asyncio.run(serve())
    finally:
        clusters.close()


if __name__ == "__main__":
    main()
