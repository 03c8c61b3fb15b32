"""[cache] prefetch: written into XCache's configuration, accepted by xrootd, checked by casa."""

from __future__ import annotations

import os
import shutil

import pytest

from casa.services.facility import facility_services
from casa.services.supervisor import Supervisor

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)


def _cache_config(f) -> str:
    cache = next(s for s in facility_services() if s.name == "cache")
    return cache.config_file(f.ctx()).read_text()


@pytest.mark.parametrize("blocks", [None, 0, 128])
def test_prefetch_reaches_a_running_cache(new_facility, blocks):
    """The cache starts (xrootd accepts the directive) with the configured read-ahead."""
    from casa.config import CacheSection

    f = new_facility("" if blocks is None else f"[cache]\nprefetch = {blocks}\n")
    if blocks is None:
        blocks = CacheSection().prefetch
    ctx = f.ctx()
    services = [s for s in facility_services() if s.name in ("issuer", "origin", "cache")]
    supervisor = Supervisor(ctx, services)
    try:
        report = supervisor.up()
        assert set(report) == {"issuer", "origin", "cache"}
        assert f"pfc.prefetch {blocks}\n" in _cache_config(f)
        health = {s.name: s for s in supervisor.status()}
        assert health["cache"].healthy, health["cache"]
    finally:
        supervisor.down()


@pytest.mark.parametrize("value", ["129", "-1", "'some'", "2.5"])
def test_invalid_prefetch_is_refused(new_facility, value):
    f = new_facility(f"[cache]\nprefetch = {value}\n")
    p = f.casa("up")
    err = " ".join(p.stderr.split())
    assert p.returncode == 3, p.stdout + p.stderr
    assert f"cache.prefetch = {value} is not valid" in err
    assert "expected blocks read ahead per open file, 0-128" in err
    assert not (f.home / "services").exists()
