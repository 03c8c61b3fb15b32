"""Reading ``casa.toml`` into a :class:`~casa.config.model.FacilityConfig`.

Every problem of a file (an unknown section or key, a key that was replaced, a bad value,
settings that contradict each other) is collected and reported in one ConfigError, each
naming its dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from casa.config.model import (
    CONFIG_NAME,
    GATEWAY_BACKENDS,
    SECTIONS,
    FacilityConfig,
    FacilityPaths,
    parse_size,
)
from casa.errors import ConfigError, UsageError
from casa.names import check_facility_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The shortest ``issuer.token_lifetime``: renewals (a third of it apart) need some seconds.
MIN_TOKEN_LIFETIME = 30


def _site_workers_replaced(value: Any) -> str:
    """Replaced by ``gateway.backend``, which alone chooses where the gateway's clusters
    run: ``"slurm"`` and ``"kubernetes"`` move there unchanged, ``"local"`` is its default
    (``"auto"``), and ``"htcondor"`` was never a gateway backend (HTCondor workers come from
    ``casa run --cluster htcondor``, configured by ``[htcondor]``)."""
    if value == "htcondor":
        return (
            "site.workers was replaced by gateway.backend, and 'htcondor' is not a gateway "
            "backend: HTCondor workers come from 'casa run --cluster htcondor', configured by "
            "[htcondor]; remove site.workers (no gateway key is needed)"
        )
    if value in ("slurm", "kubernetes"):
        return (
            f"site.workers was replaced by gateway.backend: write gateway.backend = "
            f'"{value}" under [gateway] instead'
        )
    if value == "local":
        return (
            "site.workers was replaced by gateway.backend: remove site.workers (clusters on "
            'the gateway\'s host are gateway.backend = "auto", the default, or "local" or '
            '"local-accounts" under [gateway])'
        )
    return (
        "site.workers was replaced by gateway.backend: remove it and write gateway.backend = "
        f"one of {_choices(GATEWAY_BACKENDS)} under [gateway]"
    )


#: Keys casa.toml once had, by dotted key: what to write instead, given the old value.
REPLACED_KEYS = {"site.workers": _site_workers_replaced}

#: Why a value that is not among a key's choices may have been meant, by (key, value).
_CHOICE_HINTS = {
    ("gateway.backend", "htcondor"): (
        "HTCondor workers come from 'casa run --cluster htcondor', configured by [htcondor]; "
        "they need no gateway key"
    ),
}


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _check_section(name: str, cls: type, raw: Any, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"[{name}] must be a table of settings, not {type(raw).__name__}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if f"{name}.{key}" in REPLACED_KEYS:
            errors.append(REPLACED_KEYS[f"{name}.{key}"](raw[key]))
        elif key not in fields:
            errors.append(f"unknown key {name}.{key} (known keys in [{name}]: {', '.join(fields)})")
    values = {}
    for key, f in fields.items():
        if key not in raw:
            continue
        value = raw[key]
        expected = {"int": int, "float": (int, float), "str": str, "list": list}[f.type]
        ok = isinstance(value, expected) and not isinstance(value, bool)
        if ok and f.type == "list":
            ok = all(isinstance(v, str) for v in value)
        choices = f.metadata.get("choices")
        if ok and choices is not None and value not in choices:
            hint = _CHOICE_HINTS.get((f"{name}.{key}", value))
            errors.append(
                f"{name}.{key} = {value!r} is not valid: expected one of {_choices(choices)}"
                + (f" ({hint})" if hint else "")
            )
            continue
        check = f.metadata.get("check")
        if ok and check is not None:
            ok = check(value)
        if not ok:
            errors.append(f"{name}.{key} = {value!r} is not valid: expected {f.metadata['help']}")
            continue
        values[key] = float(value) if f.type == "float" else value
    return cls(**values)


def _validate(config: FacilityConfig, errors: list[str]) -> None:
    cache = config.cache
    try:
        if parse_size(cache.ram) < (1 << 30):
            errors.append(f"cache.ram = {cache.ram!r} is too small: XCache needs at least 1g")
    except ValueError:
        errors.append(f"cache.ram = {cache.ram!r} is not a size such as 1g or 2048m")
    try:
        parse_size(cache.blocksize)
    except ValueError:
        errors.append(f"cache.blocksize = {cache.blocksize!r} is not a size such as 512k or 1m")
    if not 0 < cache.disk_low < cache.disk_high <= 1:
        errors.append(
            f"cache.disk_low = {cache.disk_low} and cache.disk_high = {cache.disk_high} must "
            "satisfy 0 < disk_low < disk_high <= 1"
        )
    for key in ("max_memory_per_user", "max_worker_memory"):
        value = getattr(config.gateway, key)
        try:
            parse_size(value)
        except ValueError:
            errors.append(f"gateway.{key} = {value!r} is not a size such as 8g")
    if config.issuer.token_lifetime < MIN_TOKEN_LIFETIME:
        errors.append(f"issuer.token_lifetime must be at least {MIN_TOKEN_LIFETIME} seconds")
    seen: dict[int, str] = {}
    for key, port in config.ports().items():
        if port in seen:
            errors.append(f"{seen[port]} and {key} are both {port}: give each its own")
        else:
            seen[port] = key
    hub = config.hub
    if hub.auth == "oidc":
        needed = ("oidc_authorize_url", "oidc_token_url", "oidc_userdata_url", "oidc_client_id",
                  "oidc_client_secret_file")  # fmt: skip
        for key in needed:
            if not getattr(hub, key):
                errors.append(f"hub.{key} is needed when hub.auth = 'oidc'")
    _validate_site(config, errors)
    try:
        check_facility_name(config.facility.name)
    except UsageError as e:
        errors.append(str(e))


def _validate_site(config: FacilityConfig, errors: list[str]) -> None:
    site = config.site
    issuer = config.host_of("issuer")
    for service in ("gateway", "hub"):
        if config.host_of(service) != issuer:
            errors.append(
                f"site.{service} = {config.host_of(service)!r} differs from the issuer's host "
                f"{issuer!r}: the {service} mints users' tokens through the issuer's local "
                f"socket, so it must run on the issuer's host (set site.{service} and "
                "site.issuer to the same host)"
            )
    if site.worker_cache and site.worker_cache not in config.cache_hosts():
        errors.append(
            f"site.worker_cache = {site.worker_cache!r} runs no cache: name site.cache or one of "
            f"site.caches ({', '.join(config.cache_hosts())})"
        )


def parse_config(data: dict, source: str = CONFIG_NAME) -> FacilityConfig:
    """Build a FacilityConfig from parsed TOML; ConfigError lists every problem at once."""
    errors: list[str] = []
    for key in data:
        if key not in SECTIONS:
            errors.append(f"unknown section [{key}] (known sections: {', '.join(SECTIONS)})")
    parts = {
        name: _check_section(name, cls, data[name], errors)
        for name, cls in SECTIONS.items()
        if name in data
    }
    config = FacilityConfig(**parts)
    _validate(config, errors)
    if errors:
        raise ConfigError(f"{source} is not valid:\n  - " + "\n  - ".join(errors))
    return config


def load_config(
    paths: FacilityPaths, config_file: str | os.PathLike | None = None
) -> FacilityConfig:
    """Read ``--config FILE`` or ``$CASA_HOME/casa.toml``; defaults when neither exists."""
    path = Path(config_file) if config_file else paths.config_file
    if not path.exists():
        if config_file:
            raise ConfigError(f"configuration file {path} does not exist")
        return FacilityConfig()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return parse_config(data, str(path))
