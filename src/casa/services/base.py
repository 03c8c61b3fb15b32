"""The contract every facility service fulfils, so that one supervisor can run them all."""

from __future__ import annotations

import abc
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from casa.config import is_this_host
from casa.facility import Facility


@dataclass(frozen=True)
class Health:
    """The result of a protocol-level health check."""

    ok: bool
    detail: str


def get_json(url: str, timeout: float = 2.0) -> tuple[dict | None, Health | None]:
    """GET ``url`` and parse JSON: ``(body, None)``, or ``(None, an unhealthy Health)``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read()), None
    except OSError as e:
        return None, Health(False, f"no answer from {url}: {e}")
    except ValueError:
        return None, Health(False, f"{url} did not answer JSON")


def casa_module_command(ctx: Facility, module: str) -> list[str]:
    """``python -m MODULE --home HOME [--config FILE]``, by the same Python as casa: the
    command of a service that is one of casa's own modules."""
    import sys

    cmd = [sys.executable, "-m", module, "--home", str(ctx.paths.home)]
    if ctx.config_file:
        cmd += ["--config", str(ctx.config_file)]
    return cmd


class Service(abc.ABC):
    """One long-running process of the facility.

    The supervisor calls, in order: ``preflight`` (is everything installed?), ``prepare``
    (write configuration, create folders), ``command`` and ``environment`` (how to start
    it), then ``health`` until it answers. Services must run in the foreground: the
    supervisor owns the process, its PID file and its log.
    """

    #: Short name used in commands, folders and messages.
    name: str

    @abc.abstractmethod
    def port(self, ctx: Facility) -> int:
        """The TCP port the service listens on."""

    def ports(self, ctx: Facility) -> dict[str, int]:
        """Every port the service listens on, by its key in the service's casa.toml section.

        Read from the configuration's one list of ports
        (:meth:`casa.config.FacilityConfig.service_ports`), whose section is the service's
        ``name``.
        """
        return ctx.config.service_ports(self.name)

    def hosts(self, ctx: Facility) -> list[str]:
        """The hosts that run this service (``[site]`` in casa.toml)."""
        return [ctx.config.host_of(self.name)]

    def host(self, ctx: Facility) -> str:
        """The service's address here: the first of its hosts that is this machine's own."""
        hosts = self.hosts(ctx)
        return next((h for h in hosts if is_this_host(h)), hosts[0])

    def runs_here(self, ctx: Facility) -> bool:
        """Whether ``casa up`` on this machine starts the service."""
        return any(is_this_host(h) for h in self.hosts(ctx))

    def url(self, ctx: Facility) -> str | None:
        """Where users reach the service, if they call it themselves (``casa status``)."""
        return None

    def preflight(self, ctx: Facility) -> None:
        """Raise ServiceError, with what to install or change, if the service cannot start."""
        return None

    def prepare(self, ctx: Facility) -> None:
        """Write generated configuration and create the folders the service needs."""
        return None

    @abc.abstractmethod
    def command(self, ctx: Facility) -> list[str]:
        """The program and arguments that run the service in the foreground."""

    def environment(self, ctx: Facility) -> dict[str, str]:
        """Extra environment variables for the service process."""
        return {}

    def working_dir(self, ctx: Facility) -> Path:
        """The folder the service runs in."""
        return ctx.service_dir(self.name)

    def strays(self, ctx: Facility) -> list[int]:
        """Processes the service started in sessions of their own, alive now.

        Stopping the service's process group misses them; after the service itself was
        killed (SIGKILL, a crash) they would live on, so ``casa down`` stops them too.
        """
        return []

    @abc.abstractmethod
    def health(self, ctx: Facility) -> Health:
        """Ask the service, in its own protocol, whether it is working."""
