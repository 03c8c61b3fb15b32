"""casa.toml's model: one key per decision, and every error names a key that exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from casa.config import (
    GATEWAY_BACKENDS,
    REPLACED_KEYS,
    SECTIONS,
    FacilityConfig,
    parse_config,
    tomllib,
)
from casa.config.reference import render_reference
from casa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

#: Every key of the model, dotted.
MODEL_KEYS = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(tomllib.loads(text))
    return str(e.value)


def test_a_duplicate_port_names_both_real_keys():
    text = _error("[gateway]\nscheduler_port = 21000\n")
    assert "gateway.scheduler_port and hub.port are both 21000: give each its own" in text
    text = _error("[cache]\nport = 21096\n[hub]\nproxy_api_port = 21096\n")
    assert "issuer.port and cache.port are both 21096" in text
    assert "issuer.port and hub.proxy_api_port are both 21096" in text


def test_every_port_is_listed_by_a_key_of_the_model():
    config = parse_config({"hub": {"proxy_api_port": 23002}})
    ports = config.ports()
    assert ports["hub.proxy_api_port"] == 23002
    assert set(ports) <= MODEL_KEYS
    port_keys = {k for k in MODEL_KEYS if k.endswith("port") and not k.startswith("htcondor.")}
    assert set(ports) == port_keys, "a service's port missing from FacilityConfig.ports()"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("slurm", 'write gateway.backend = "slurm" under [gateway] instead'),
        ("kubernetes", 'write gateway.backend = "kubernetes" under [gateway] instead'),
        ("local", 'remove site.workers (clusters on the gateway\'s host are gateway.backend = "auto"'),
        ("htcondor", "HTCondor workers come from 'casa run --cluster htcondor', configured by "
                     "[htcondor]; remove site.workers (no gateway key is needed)"),
        ("pbs", "write gateway.backend = one of 'auto', 'local', 'local-accounts', 'slurm', "
                "'kubernetes' under [gateway]"),
    ],
)  # fmt: skip
def test_site_workers_says_what_to_write_instead(value, says):
    text = _error(f'[site]\nworkers = "{value}"\n')
    assert "site.workers was replaced by gateway.backend" in text
    assert says in text
    assert "unknown key site.workers" not in text


def test_site_workers_is_no_longer_a_key():
    assert "site.workers" not in MODEL_KEYS
    assert set(REPLACED_KEYS).isdisjoint(MODEL_KEYS)


@pytest.mark.parametrize("backend", GATEWAY_BACKENDS)
def test_gateway_backend_is_the_one_key(backend):
    assert parse_config({"gateway": {"backend": backend}}).gateway.backend == backend
    assert set(GATEWAY_BACKENDS) == {"auto", "local", "local-accounts", "slurm", "kubernetes"}


def test_htcondor_is_not_a_gateway_backend():
    text = _error('[gateway]\nbackend = "htcondor"\n')
    assert (
        "gateway.backend = 'htcondor' is not valid: expected one of 'auto', 'local', "
        "'local-accounts', 'slurm', 'kubernetes'"
    ) in text
    assert "casa run --cluster htcondor" in text


def test_every_problem_is_reported_at_once():
    text = _error(
        '[site]\nworkers = "slurm"\n[gateway]\nbackend = "pbs"\nport = 21000\n[nowhere]\n'
    )
    assert text.count("\n  - ") == 4
    for part in ("site.workers was replaced", "gateway.backend = 'pbs'",
                 "gateway.port and hub.port are both 21000", "unknown section [nowhere]"):  # fmt: skip
        assert part in text


def _reference_keys(text: str) -> list[str]:
    return re.findall(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \|", text, flags=re.MULTILINE)


def test_every_key_in_the_reference_exists_in_the_model():
    keys = _reference_keys((ROOT / "docs" / "configuration.md").read_text())
    assert keys, "docs/configuration.md lists no keys"
    assert set(keys) <= MODEL_KEYS, f"not in the model: {sorted(set(keys) - MODEL_KEYS)}"
    assert sorted(_reference_keys(render_reference())) == sorted(MODEL_KEYS)
    assert len(keys) == len(set(keys))


def test_every_default_in_the_reference_is_the_models():
    defaults = FacilityConfig()
    rows = re.findall(
        r"^\| `([a-z0-9_]+)\.([a-z0-9_]+)` \| [^|]+(?:\\\|[^|]+)* \| `(.*?)` \|",
        render_reference(),
        flags=re.MULTILINE,
    )
    assert len(rows) == len(MODEL_KEYS)
    for name, key, default in rows:
        written = tomllib.loads(f"v = {default}")["v"]
        assert written == getattr(getattr(defaults, name), key), f"{name}.{key}"


#: Code spans in the docs that look like keys but name a file or a Python attribute.
NOT_KEYS = {"issuer.pem", "facility.worker_zlib_library", "gateway.new_cluster"}


def test_the_docs_name_only_keys_that_exist():
    """A dotted key in the prose of the docs or README is a key of the model."""
    pattern = re.compile(r"`(" + "|".join(SECTIONS) + r")\.([a-z_]+)(?: = [^`]*)?`")
    stale = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if path.name == "configuration.md":
            continue
        for section, key in pattern.findall(path.read_text()):
            if f"{section}.{key}" not in MODEL_KEYS | NOT_KEYS:
                stale.append(f"{path.name}: {section}.{key}")
    assert not stale, stale


def test_an_account_without_a_facility_of_its_own_uses_the_machines(tmp_path, monkeypatch):
    """Over SSH, a facility user's casa finds the facility root runs; an account with its
    own facility folder keeps it; root always has the machine's."""
    from casa.config import model

    site = tmp_path / "var-lib-casa"
    monkeypatch.setattr(model, "SITE_HOME", site)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(model.os, "geteuid", lambda: 1000)
    own = tmp_path / "home" / ".local" / "share" / "casa"
    assert model.default_home() == own, "no facility on this machine: the account's own"
    (site / "services").mkdir(parents=True)
    assert model.default_home() == site
    own.mkdir(parents=True)
    assert model.default_home() == own
    monkeypatch.setattr(model.os, "geteuid", lambda: 0)
    assert model.default_home() == site
