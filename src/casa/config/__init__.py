"""Facility configuration: one ``casa.toml``, one typed model, validated as a whole.

:mod:`casa.config.model` holds the model (the state directory's paths, a frozen dataclass
per section whose fields carry their help text), :mod:`casa.config.load` reads and
validates a file into it, and :mod:`casa.config.reference` renders
``docs/configuration.md`` from it (``make docs``).
"""

from casa.config.load import (
    MIN_TOKEN_LIFETIME,
    REPLACED_KEYS,
    load_config,
    parse_config,
    tomllib,
)
from casa.config.load import _check_section as _check_section  # tests check a section alone
from casa.config.model import (
    CONFIG_NAME,
    GATEWAY_BACKENDS,
    SECTIONS,
    SERVICE_PORTS,
    SITE_SERVICES,
    CacheSection,
    FacilityConfig,
    FacilityPaths,
    FacilitySection,
    GatewaySection,
    HTCondorSection,
    HubSection,
    IssuerSection,
    OriginSection,
    SiteSection,
    SlurmSection,
    XRootDSection,
    default_home,
    facility_paths,
    is_this_host,
    parse_size,
    private_database,
)

__all__ = [
    "CONFIG_NAME",
    "GATEWAY_BACKENDS",
    "MIN_TOKEN_LIFETIME",
    "REPLACED_KEYS",
    "SECTIONS",
    "SERVICE_PORTS",
    "SITE_SERVICES",
    "CacheSection",
    "FacilityConfig",
    "FacilityPaths",
    "FacilitySection",
    "GatewaySection",
    "HTCondorSection",
    "HubSection",
    "IssuerSection",
    "OriginSection",
    "SiteSection",
    "SlurmSection",
    "XRootDSection",
    "default_home",
    "facility_paths",
    "is_this_host",
    "load_config",
    "parse_config",
    "parse_size",
    "private_database",
    "tomllib",
]
