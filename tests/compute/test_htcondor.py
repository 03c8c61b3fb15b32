"""HTCondor workers: the submit description dask-jobqueue builds from ``[htcondor]``.

No HTCondor here: the tests read ``cluster.job_script()`` (a real TLS scheduler is started
for it), and one test plays HTCondor's starter: it copies the transferred files into a
scratch folder, applies the submit description's environment and runs the job's command,
whose worker must then join the scheduler over TLS with the token file it was sent.
"""

from __future__ import annotations

import gc
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from casa.compute.htcondor import (
    SCRATCH,
    HTCondorSection,
    htcondor_cluster,
    job_token_file,
)
from casa.compute.tls import write_cluster_certificate
from casa.config import FacilityConfig, FacilitySection, _check_section, facility_paths
from casa.errors import ConfigError, UsageError
from casa.facility import Facility
from submit_files import submit_directives, submit_environment, worker_command

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZQ"
GIB = 1 << 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ctx(tmp_path: Path) -> Facility:
    config = FacilityConfig(facility=FacilitySection(name="casa", host="hub.internal"))
    return Facility(config, facility_paths(tmp_path / "home"))


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens" / "bt_u1234"
    path.parent.mkdir()
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def _settings(**changes) -> HTCondorSection:
    base = dict(
        contact_host="casa.example.org",
        listen_host="127.0.0.1",
        scheduler_port=_free_port(),
        accounting_group="group_cms.casa",
        worker_cores=3,
        worker_memory="5g",
        worker_disk="7g",
        cache_url="root://xcache.example.org:1094",
    )
    base.update(changes)
    return HTCondorSection(**base)


@pytest.fixture()
def built(ctx, token_file, tmp_path):
    """A cluster for alice from non-default settings, its submit description and command."""
    settings = _settings()
    cluster = htcondor_cluster(
        ctx, settings=settings, token_file=token_file, user="alice", workdir=tmp_path / "w"
    )
    try:
        script = cluster.job_script()
        yield settings, cluster, script, worker_command(script)
    finally:
        cluster.close()


def test_token_and_tls_files_travel_with_the_job(built, token_file, tmp_path):
    _, _, script, _ = built
    d = submit_directives(script)
    tls = tmp_path / "w" / "tls"
    expected = [token_file, tls / "ca.pem", tls / "cluster.pem", tls / "cluster.key"]
    assert d["transfer_input_files"].split(",") == [str(p) for p in expected]
    assert d["encrypt_input_files"] == d["transfer_input_files"]
    assert d["should_transfer_files"] == "YES"
    assert d["when_to_transfer_output"] == "ON_EXIT"
    # The per-cluster key casa wrote is private.
    assert (tls / "cluster.key").stat().st_mode & 0o777 == 0o600


def test_token_is_never_in_the_job_text_or_environment(built):
    _, cluster, script, command = built
    assert TOKEN not in script
    assert TOKEN not in command
    assert not any(TOKEN in v for v in submit_environment(script).values())
    assert "BEARER_TOKEN=" not in script.replace("unset BEARER_TOKEN;", "")
    assert TOKEN not in repr(cluster._job_kwargs)


def test_bearer_token_file_names_the_job_local_copy(built):
    _, _, _, command = built
    steps = [s.strip() for s in command.split(";")]
    assert "unset BEARER_TOKEN" in steps
    assert f'export BEARER_TOKEN_FILE="{SCRATCH}/bt_u1234"' in steps
    # Exported before the worker starts.
    exports = steps.index(f'export BEARER_TOKEN_FILE="{SCRATCH}/bt_u1234"')
    assert exports < next(i for i, s in enumerate(steps) if "dask_worker" in s)


def test_accounting_group_is_charged_to_the_user(built):
    _, _, script, _ = built
    d = submit_directives(script)
    assert d["+AccountingGroup"] == '"group_cms.casa.alice"'
    assert d["+AccountingGroupUser"] == '"alice"'


def test_workers_contact_the_scheduler_over_tls_at_its_contact_address(built):
    settings, cluster, script, command = built
    contact = f"tls://casa.example.org:{settings.scheduler_port}"
    worker = shlex.split(command.split(";")[-1])
    assert worker[:3] == ["python3", "-m", "distributed.cli.dask_worker"]
    assert worker[3] == contact
    assert submit_directives(script)["+DaskSchedulerAddress"] == f'"{contact}"'
    # The scheduler listens where the settings say, TLS only.
    assert cluster.scheduler.address == f"tls://127.0.0.1:{settings.scheduler_port}"
    assert cluster.scheduler.contact_address == contact


def test_worker_uses_the_transferred_tls_files(built):
    _, _, _, command = built
    worker = shlex.split(command.split(";")[-1])
    options = {a: b for a, b in zip(worker, worker[1:], strict=False) if a.startswith("--")}
    assert options["--protocol"] == "tls://"
    assert options["--tls-ca-file"] == f"{SCRATCH}/ca.pem"
    assert options["--tls-cert"] == f"{SCRATCH}/cluster.pem"
    assert options["--tls-key"] == f"{SCRATCH}/cluster.key"
    assert options["--local-directory"] == SCRATCH
    assert f'chmod 0600 "{SCRATCH}/bt_u1234" "{SCRATCH}/cluster.key"' in command


def test_worker_size_comes_from_the_settings(built):
    _, _, script, command = built
    d = submit_directives(script)
    assert d["MY.DaskWorkerCores"] == "3"
    assert d["MY.DaskWorkerMemory"] == str(5 * GIB)
    assert d["MY.DaskWorkerDisk"] == str(7 * GIB)
    assert d["RequestCpus"] == "MY.DaskWorkerCores"
    # dask-jobqueue splits 3 cores into 3 single-threaded worker processes.
    assert "--nworkers 3" in command and "--nthreads 1" in command


def test_cache_url_reaches_the_worker_environment(built, ctx, token_file, tmp_path):
    _, _, script, _ = built
    assert submit_environment(script) == {"CASA_CACHE_URL": "root://xcache.example.org:1094"}
    # Without a cache_url, workers read through this facility's own cache.
    cluster = htcondor_cluster(
        ctx, settings=_settings(cache_url=""), token_file=token_file, workdir=tmp_path / "d"
    )
    try:
        env = submit_environment(cluster.job_script())
    finally:
        cluster.close()
    assert env == {"CASA_CACHE_URL": f"root://hub.internal:{ctx.config.cache.port}"}


def test_schedd_pool_image_and_extra_directives(ctx, token_file, tmp_path):
    settings = _settings(
        schedd="schedd.example.org",
        pool="cm.example.org",
        accounting_group="",
        worker_image="docker://coffeateam/casa-worker:1.0",
        extra_directives=["requirements = (OpSysMajorVer == 9)", '+DESIRED_Sites = "T2_US"'],
    )
    cluster = htcondor_cluster(ctx, settings=settings, token_file=token_file, workdir=tmp_path)
    try:
        script = cluster.job_script()
        job = cluster._dummy_job
    finally:
        cluster.close()
    d = submit_directives(script)
    assert d["universe"] == "container"
    assert d["container_image"] == "docker://coffeateam/casa-worker:1.0"
    assert d["requirements"] == "(OpSysMajorVer == 9)"
    assert d["+DESIRED_Sites"] == '"T2_US"'
    assert "+AccountingGroup" not in d
    assert job.submit_command.split() == [
        "condor_submit",
        "-pool",
        "cm.example.org",
        "-name",
        "schedd.example.org",
        "-spool",
    ]
    assert job.cancel_command.split() == [
        "condor_rm",
        "-pool",
        "cm.example.org",
        "-name",
        "schedd.example.org",
    ]


def test_site_tls_files_are_used_as_given(ctx, token_file, tmp_path):
    site = write_cluster_certificate(tmp_path / "site")
    combined = tmp_path / "site" / "hostcert.pem"
    combined.write_bytes(site.cert.read_bytes() + site.key.read_bytes())
    settings = _settings(tls_ca_file=str(site.ca), tls_cert_file=str(combined))
    cluster = htcondor_cluster(ctx, settings=settings, token_file=token_file, workdir=tmp_path)
    try:
        script = cluster.job_script()
        security = cluster.security
    finally:
        cluster.close()
    files = submit_directives(script)["transfer_input_files"].split(",")
    assert files == [str(token_file), str(site.ca), str(combined)]  # cert and key: one file
    assert "--tls-key $_CONDOR_SCRATCH_DIR/hostcert.pem" in worker_command(script)
    assert security.tls_scheduler_cert == str(combined)
    assert security.require_encryption


def test_bad_tls_settings_are_refused(ctx, token_file, tmp_path):
    with pytest.raises(ConfigError, match="tls_cert_file are both needed"):
        htcondor_cluster(ctx, settings=_settings(tls_ca_file="/x"), token_file=token_file)
    with pytest.raises(ConfigError, match="is not a file"):
        htcondor_cluster(
            ctx,
            settings=_settings(tls_ca_file="/nope/ca.pem", tls_cert_file="/nope/c.pem"),
            token_file=token_file,
        )
    site = write_cluster_certificate(tmp_path / "site")
    clash = tmp_path / "other" / "ca.pem"
    clash.parent.mkdir()
    clash.write_bytes(site.cert.read_bytes())
    settings = _settings(
        tls_ca_file=str(site.ca), tls_cert_file=str(clash), tls_key_file=str(site.key)
    )
    with pytest.raises(ConfigError, match="both arrive in the job as 'ca.pem'"):
        htcondor_cluster(ctx, settings=settings, token_file=token_file)


def test_own_temporary_folder_is_removed(ctx, token_file, tmp_path, monkeypatch):
    made = tmp_path / "casa-htcondor-x"

    original = tempfile.mkdtemp

    def mkdtemp(*args, prefix=None, **kwargs) -> str:
        if prefix != "casa-htcondor-":  # distributed's own temporary folders
            return original(*args, prefix=prefix, **kwargs)
        made.mkdir(mode=0o700)
        return str(made)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(UsageError):  # fails after the certificate was written
        htcondor_cluster(ctx, settings=_settings(), token_file=tmp_path / "tls")
    assert not made.exists()
    cluster = htcondor_cluster(ctx, settings=_settings(), token_file=token_file)
    try:
        assert (made / "tls" / "cluster.key").exists()
    finally:
        cluster.close()
        del cluster
        gc.collect()
    assert not made.exists()


def test_token_must_be_a_file(monkeypatch, tmp_path, token_file):
    monkeypatch.delenv("BEARER_TOKEN", raising=False)
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token_file))
    assert job_token_file() == token_file
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="casa token issue"):
        job_token_file()
    with pytest.raises(UsageError, match="does not exist"):
        job_token_file(tmp_path / "missing")
    # Only in $BEARER_TOKEN (a notebook on Kubernetes): written to a private file to send.
    monkeypatch.setenv("BEARER_TOKEN", TOKEN)
    with pytest.raises(UsageError, match=r"only in \$BEARER_TOKEN") as e:
        job_token_file()
    assert TOKEN not in str(e.value)
    spilled = job_token_file(spill=tmp_path)
    assert spilled.parent == tmp_path
    assert spilled.read_text().strip() == TOKEN
    assert spilled.stat().st_mode & 0o777 == 0o600


def test_token_from_the_environment_travels_as_a_file(ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("BEARER_TOKEN", TOKEN)
    cluster = htcondor_cluster(ctx, settings=_settings(), workdir=tmp_path / "w")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert TOKEN not in script
    sent = Path(submit_directives(script)["transfer_input_files"].split(",")[0])
    assert sent.parent == tmp_path / "w" and sent.read_text().strip() == TOKEN
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o700
    assert f'export BEARER_TOKEN_FILE="{SCRATCH}/{sent.name}"' in worker_command(script)


def test_casa_config_can_import_the_section_cheaply():
    """casa.config holds [htcondor]; neither it nor the module loads dask-jobqueue eagerly."""
    code = (
        "import sys; import casa.config; import casa.compute.htcondor as h; "
        "heavy = ('dask_jobqueue', 'distributed'); "
        "print(sorted(m for m in heavy if m in sys.modules)); "
        "print(h.CasaHTCondorCluster.__name__, 'dask_jobqueue' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "CasaHTCondorCluster True"]


def test_section_follows_casa_toml_conventions():
    errors: list[str] = []
    raw = {
        "worker_cores": 8,
        "worker_memory": "16g",
        "accounting_group": "group_cms.casa",
        "extra_directives": ["requirements = true"],
        "scheduler_port": 0,
    }
    section = _check_section("htcondor", HTCondorSection, raw, errors)
    assert errors == []
    assert section.worker_cores == 8 and section.worker_memory == "16g"
    bad = {
        "worker_cores": 0,
        "worker_memory": "lots",
        "scheduler_port": 70000,
        "extra_directives": ["no equals sign"],
        "colour": "red",
    }
    _check_section("htcondor", HTCondorSection, bad, errors)
    text = "\n".join(errors)
    for key in ("worker_cores", "worker_memory", "scheduler_port", "extra_directives"):
        assert f"htcondor.{key} =" in text
    assert "unknown key htcondor.colour" in text
    assert len(errors) == 5


def test_the_job_command_runs_a_worker_that_joins_over_tls(ctx, token_file, tmp_path):
    """Play HTCondor's starter: scratch folder, transferred files, environment, /bin/sh -c."""
    from distributed import Client

    settings = _settings(
        contact_host="127.0.0.1", worker_cores=1, worker_memory="1g", python=sys.executable
    )
    cluster = htcondor_cluster(ctx, settings=settings, token_file=token_file, workdir=tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = None
    try:
        script = cluster.job_script()
        for name in submit_directives(script)["transfer_input_files"].split(","):
            (scratch / Path(name).name).write_bytes(Path(name).read_bytes())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BEARER_", "DASK_"))}
        env.update(
            submit_environment(script),
            _CONDOR_SCRATCH_DIR=str(scratch),
            BEARER_TOKEN="a stale token the job must not use",
        )
        proc = subprocess.Popen(
            ["/bin/sh", "-c", worker_command(script)],
            cwd=scratch,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with Client(cluster, security=cluster.security, timeout=20) as client:
            client.wait_for_workers(1, timeout=20)

            def seen_by_worker():
                from casa.auth.tokens import discover_token

                found = discover_token()
                return {
                    "token": found.token if found else None,
                    "source": found.source if found else None,
                    "cache": os.environ.get("CASA_CACHE_URL"),
                    "mode": oct(os.stat(os.environ["BEARER_TOKEN_FILE"]).st_mode & 0o777),
                }

            seen = client.submit(seen_by_worker, pure=False).result(timeout=20)
            worker_address = next(iter(client.scheduler_info()["workers"]))
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        cluster.close()
    assert seen == {
        "token": TOKEN,
        "source": str(scratch / "bt_u1234"),
        "cache": "root://xcache.example.org:1094",
        "mode": "0o600",
    }
    assert worker_address.startswith("tls://")


def test_worker_command_parser_handles_condor_quoting():
    script = 'Arguments = "-c \'echo ""a b"" it\'\'s\'"\nExecutable = /bin/sh\n'
    assert worker_command(script) == 'echo "a b" it\'s'
    with pytest.raises(ValueError):
        worker_command("Executable = /bin/sh\n")
