"""The site layout in casa.toml: which host runs which service, and where clusters run.

The multi-host run itself (head, a cache host and Slurm nodes in network namespaces) is in
tests/site; these tests check the layout's rules and what each host's ``casa up`` picks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from casa.config import is_this_host, parse_config
from casa.errors import ConfigError
from casa.facility import facility_context
from casa.services.facility import elsewhere, facility_supervisor
from casa.services.gateway.service import GatewayService

#: An address of TEST-NET-1 (RFC 5737): never one of this machine's own.
ELSEWHERE = "192.0.2.10"


def test_this_host_is_decided_by_the_kernel():
    assert is_this_host("127.0.0.1") and is_this_host("127.0.0.2") and is_this_host("localhost")
    assert not is_this_host(ELSEWHERE)
    assert not is_this_host("no-such-host.invalid")


def test_layout_rules_are_checked_and_named():
    with pytest.raises(ConfigError) as e:
        parse_config(
            {
                "site": {
                    "gateway": ELSEWHERE,
                    "worker_cache": "10.1.1.1",
                    "caches": ["10.2.2.2"],
                },
                "gateway": {"backend": "pbs"},
            }
        )
    text = str(e.value)
    assert "site.gateway = '192.0.2.10' differs from the issuer's host '127.0.0.1'" in text
    assert "site.worker_cache = '10.1.1.1' runs no cache" in text
    assert "127.0.0.1, 10.2.2.2" in text
    assert "gateway.backend = 'pbs' is not valid" in text
    assert "unknown key slurm.queue" in str(_error({"slurm": {"queue": "x"}}))


def _error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return e.value


def test_layout_names_hosts_and_the_workers_cache():
    config = parse_config(
        {
            "facility": {"host": "10.0.0.1"},
            "site": {"cache": "10.0.0.5", "caches": ["10.0.1.5"], "worker_cache": "10.0.1.5"},
        }
    )
    assert config.host_of("issuer") == config.host_of("gateway") == "10.0.0.1"
    assert config.cache_hosts() == ["10.0.0.5", "10.0.1.5"]
    assert config.cache_url() == "root://10.0.0.5:21095"
    assert config.worker_cache_url == "root://10.0.1.5:21095"
    assert config.issuer_url == "https://10.0.0.1:21096/casa"


def test_each_host_starts_only_its_own_services(tmp_path):
    home = tmp_path / "casa"
    home.mkdir()
    (home / "casa.toml").write_text(f'[site]\ncache = "{ELSEWHERE}"\n')
    ctx = facility_context(home)
    assert [s.name for s in facility_supervisor(ctx).services] == [
        "issuer",
        "origin",
        "gateway",
        "s3",
        "delivery",
        "hub",
    ]
    assert elsewhere(ctx) == [("cache", [ELSEWHERE])]
    # A further cache on a local address: this host runs a cache after all.
    (home / "casa.toml").write_text(f'[site]\ncache = "{ELSEWHERE}"\ncaches = ["127.0.0.3"]\n')
    ctx = facility_context(home)
    cache = [s for s in facility_supervisor(ctx).services if s.name == "cache"]
    assert cache and cache[0].host(ctx) == "127.0.0.3"
    assert ctx.config.cache_url() == f"root://{ELSEWHERE}:21095"


def test_casa_up_on_a_host_with_no_service_says_so(tmp_path):
    home = tmp_path / "casa"
    home.mkdir()
    (home / "casa.toml").write_text(
        f'[facility]\nhost = "{ELSEWHERE}"\n[site]\ncaches = ["192.0.2.11"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "casa", "--home", str(home), "up"], capture_output=True, text=True
    )
    assert done.returncode == 3, done.stderr
    said = " ".join(done.stderr.split())  # the console wraps lines
    assert "no service of this facility runs on this host" in said
    assert "cache on 192.0.2.10 and 192.0.2.11" in said
    assert not (home / "services").exists() or not any((home / "services").iterdir())


def test_slurm_workers_make_the_gateway_submit_slurm_jobs(tmp_path):
    home = tmp_path / "casa"
    home.mkdir()
    (home / "casa.toml").write_text(
        '[gateway]\nbackend = "slurm"\n[slurm]\nconf = "/etc/site/slurm.conf"\ninterface = "ib0"\n'
        'partition = "short"\nscheduler_partition = "service"\nsetup = "module load casa"\n'
    )
    ctx = facility_context(home)
    gateway = GatewayService()
    gateway.prepare(ctx)
    text = gateway.config_file(ctx).read_text()
    assert "c.DaskGateway.backend_class = 'casa.services.gateway.server.CasaSlurmBackend'" in text
    for line in (
        "c.CasaSlurmBackend.slurm_conf = '/etc/site/slurm.conf'",
        "c.CasaSlurmBackend.interface = 'ib0'",
        "c.CasaSlurmBackend.scheduler_partition = 'service'",
        "c.SlurmClusterConfig.partition = 'short'",
        "c.SlurmClusterConfig.worker_setup = 'module load casa'",
        "{'CASA_CACHE_URL': 'root://127.0.0.1:21095'}",
    ):
        assert line in text
    # The generated file is valid Python that dask-gateway-server can load.
    compile(text, str(gateway.config_file(ctx)), "exec")


def test_kubernetes_backend_refuses_a_local_gateway(tmp_path):
    from casa.errors import ServiceError

    home = tmp_path / "casa"
    home.mkdir()
    (home / "casa.toml").write_text('[gateway]\nbackend = "kubernetes"\n')
    with pytest.raises(
        ServiceError, match="gateway.backend = 'kubernetes': the gateway runs inside"
    ):
        GatewayService().preflight(facility_context(home))


@pytest.mark.parametrize("backend", ["auto", "local", "local-accounts", "slurm", "kubernetes"])
def test_gateway_backend_alone_chooses_where_clusters_run(tmp_path, backend):
    from casa.services.gateway.service import gateway_backend, user_limits

    home = tmp_path / "casa"
    home.mkdir()
    (home / "casa.toml").write_text(f'[gateway]\nbackend = "{backend}"\n')
    ctx = facility_context(home)
    auto = "local-accounts" if ctx.as_root else "local"
    assert gateway_backend(ctx) == (auto if backend == "auto" else backend)
    # Clusters off the gateway's host share out their nodes' resources by the site's rules.
    cores, memory, origins = user_limits(ctx)
    if backend in ("slurm", "kubernetes"):
        assert (cores, memory, origins) == (0, 0, {})
    else:
        assert (
            cores > 0
            and memory > 0
            and set(origins) == {"max_cores_per_user", "max_memory_per_user"}
        )


def test_casa_run_htcondor_without_condor_says_where_to_run(tmp_path):
    import shutil

    if shutil.which("condor_submit"):
        pytest.skip("HTCondor is installed here: this checks the message without it")
    done = subprocess.run(
        [sys.executable, "-m", "casa", "--home", str(tmp_path), "run", "adl1", "--files",
         str(tmp_path / "x.root"), "--cluster", "htcondor", "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "condor_submit, which is not installed here" in " ".join(done.stderr.split())
    assert not (tmp_path / "out").exists()
