"""An emulated WAN link between the cache and the origin, for ``casa bench --wan RTT,RATE``.

The origin's ``xrootd`` runs inside a network namespace of its own (``ip netns exec``),
joined to the host by a veth pair whose two ends hold the addresses of a private /30 that
no other interface of the host uses. The cache, in the host's namespace, reaches the origin
at the namespace's address, so every byte the cache fetches crosses the link. Each end of
the pair delays its outgoing packets by RTT/2 and limits them to RATE with ``tc qdisc ...
netem`` (a link of RTT 0 uses ``tbf`` for the rate alone). Traffic never leaves the host:
the /30 exists only on the two ends of the pair. Everything is removed again on exit.

The services here are the facility's own origin and cache with two changes each, made by
subclassing so that :mod:`casa.services` stays untouched: the origin's command is wrapped in
``ip netns exec NS`` and its health check asks the namespace's address; the cache's
generated configuration points ``pss.origin`` at that address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from casa.errors import ServiceError, UsageError
from casa.facility import Facility
from casa.services.base import Health
from casa.services.xrootd.service import CacheService, OriginService, xrootd_handshake

#: Where the link's /30 is taken from (the first one no host route or address overlaps).
WAN_POOL = ipaddress.ip_network("10.253.0.0/16")
#: Bytes per packet assumed when sizing netem's queue (veth offloads make many larger).
_PACKET = 1500


@dataclass(frozen=True)
class WanSpec:
    """The link asked for: round-trip time and rate."""

    rtt_ms: float
    rate_mbit: float

    @classmethod
    def parse(cls, text: str) -> WanSpec:
        """From ``--wan RTT_MS,RATE_MBIT``, such as ``20,100``."""
        rtt, sep, rate = text.partition(",")
        try:
            spec = cls(float(rtt), float(rate))
        except ValueError:
            spec = None
        if not sep or spec is None:
            raise UsageError(
                f"--wan {text!r} is not RTT_MS,RATE_MBIT: give the round-trip time in "
                "milliseconds and the rate in Mbit/s, such as --wan 20,100"
            )
        if spec.rtt_ms < 0 or spec.rate_mbit <= 0:
            raise UsageError(f"--wan {text!r} needs RTT_MS >= 0 and RATE_MBIT > 0")
        return spec


@dataclass(frozen=True)
class WanLink:
    """A link that is up: the namespace, the pair's ends and their addresses."""

    spec: WanSpec
    namespace: str
    host_interface: str
    namespace_interface: str
    host_address: str
    namespace_address: str
    qdisc: str

    def to_json(self) -> dict:
        """JSON-ready description."""
        return {
            "rtt_ms": self.spec.rtt_ms,
            "rate_mbit": self.spec.rate_mbit,
            "namespace": self.namespace,
            "host_address": self.host_address,
            "origin_address": self.namespace_address,
            "qdisc": self.qdisc,
        }


def _run(*command: str) -> str:
    """Run an ``ip``/``tc`` command; ServiceError with its message if it fails."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
        raise ServiceError(f"'{' '.join(command)}' failed: {why}")
    return proc.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host's routes and addresses cover."""
    text = _run("ip", "-4", "route", "show", "table", "all") + _run("ip", "-4", "-o", "addr")
    found = []
    for m in re.finditer(r"(?<![\d.])(\d+\.\d+\.\d+\.\d+)(/\d+)?", text):
        with contextlib.suppress(ValueError):
            found.append(ipaddress.ip_network(m[1] + (m[2] or "/32"), strict=False))
    return found


def choose_subnet(used: list[ipaddress.IPv4Network], salt: int) -> ipaddress.IPv4Network:
    """A /30 of :data:`WAN_POOL` overlapping none of ``used`` (starting at ``salt``)."""
    subnets = list(WAN_POOL.subnets(new_prefix=30))
    for i in range(len(subnets)):
        candidate = subnets[(salt + i) % len(subnets)]
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise ServiceError(f"every /30 of {WAN_POOL} is in use on this host: cannot add a WAN link")


def _qdisc(spec: WanSpec) -> list[str]:
    """The ``tc qdisc add ... root`` arguments for one end of the link (one direction)."""
    rate = f"{spec.rate_mbit:g}mbit"
    if spec.rtt_ms == 0:
        burst = max(128 * 1024, int(spec.rate_mbit * 1e6 / 8 / 100))
        return ["tbf", "rate", rate, "burst", str(burst), "latency", "100ms"]
    # The queue holds at least twice the bandwidth-delay product, so netem drops nothing.
    bdp = spec.rate_mbit * 1e6 / 8 * spec.rtt_ms / 1000
    limit = max(1000, int(2 * bdp / _PACKET))
    delay = f"{spec.rtt_ms / 2:g}ms"
    return ["netem", "delay", delay, "rate", rate, "limit", str(limit)]


def check_wan_possible() -> None:
    """UsageError naming what is missing if this process cannot build a WAN link."""
    if os.geteuid() != 0:
        raise UsageError("--wan needs root: it creates a network namespace and a veth pair")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UsageError(f"--wan needs the '{tool}' command: apt-get install iproute2")


@contextlib.contextmanager
def wan_link(spec: WanSpec) -> Iterator[WanLink]:
    """Create the namespace, the veth pair and its shaping; remove them all on exit."""
    check_wan_possible()
    tag = f"{os.getpid() % 100000}"
    namespace = f"casa-bench-wan-{tag}"
    host_if, ns_if = f"cbw{tag}h", f"cbw{tag}n"
    subnet = choose_subnet(_used_networks(), os.getpid())
    host_address, ns_address = (str(a) for a in subnet.hosts())
    qdisc = _qdisc(spec)
    try:
        _run("ip", "netns", "add", namespace)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", namespace)
        _run("ip", "addr", "add", f"{host_address}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("ip", "-n", namespace, "addr", "add", f"{ns_address}/30", "dev", ns_if)
        _run("ip", "-n", namespace, "link", "set", ns_if, "up")
        try:
            _run("tc", "qdisc", "add", "dev", host_if, "root", *qdisc)
            _run("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", ns_if, "root",
                 *qdisc)  # fmt: skip
        except ServiceError as e:
            if "unknown" in str(e).lower():
                raise UsageError(
                    f"this kernel has no '{qdisc[0]}' queueing discipline, which --wan needs "
                    f"to emulate the link: load it with 'modprobe sch_{qdisc[0]}', or run the "
                    "bench without --wan (a link without delay, such as --wan 0,100, needs "
                    "only 'tbf')"
                ) from None
            raise
        yield WanLink(spec, namespace, host_if, ns_if, host_address, ns_address, " ".join(qdisc))
    finally:
        # Deleting one end removes the pair; the namespace goes once its processes are gone.
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


class WanOriginService(OriginService):
    """The origin, run inside the link's namespace and checked at the namespace's address."""

    def __init__(self, link: WanLink):
        self.link = link

    def command(self, ctx: Facility) -> list[str]:
        """``ip netns exec NS xrootd ...`` (``ip`` execs xrootd: the PID stays the same)."""
        return ["ip", "netns", "exec", self.link.namespace, *super().command(ctx)]

    def health(self, ctx: Facility) -> Health:
        """The XRootD handshake, across the link."""
        return xrootd_handshake(self.link.namespace_address, self.port(ctx))


class WanCacheService(CacheService):
    """The cache, fetching from the origin at the namespace's address."""

    def __init__(self, link: WanLink):
        self.link = link

    def prepare(self, ctx: Facility) -> None:
        """The cache's usual configuration with ``pss.origin`` on the far side of the link."""
        super().prepare(ctx)
        path = self.config_file(ctx)
        text, n = re.subn(
            r"^pss\.origin .*$",
            f"pss.origin {self.link.namespace_address}:{ctx.config.origin.port}",
            path.read_text(),
            flags=re.MULTILINE,
        )
        if n != 1:
            raise ServiceError(f"{path} has no single 'pss.origin' line to point across the link")
        path.write_text(text)
