"""Dask workers as HTCondor jobs at a site, the way Coffea-casa's ``CoffeaCasaCluster`` ran them.

The scheduler runs where the user is (a notebook, ``casa run``); each worker is one
HTCondor job built by dask-jobqueue's ``HTCondorCluster``, configured from ``[htcondor]``
in ``casa.toml``:

- TLS only: the scheduler and the workers share one CA, certificate and key (the site's,
  or a per-cluster certificate casa writes), and workers reach the scheduler at its
  ``tls://`` contact address, the address the site's worker nodes can route to;
- the user's data token and the TLS files travel with the job as files
  (``transfer_input_files``, encrypted in transit): the token text is never written into
  the submit description, its arguments or its environment;
- on the worker, ``BEARER_TOKEN_FILE`` names the transferred token in the job's scratch
  directory, and ``CASA_CACHE_URL`` the site's XCache the worker reads ``root://`` through;
  during a run the token is renewed through a worker plugin (:mod:`casa.worker.token`);
- jobs carry the site's accounting group (``+AccountingGroup = "GROUP.USER"``).

Nothing here needs HTCondor to build the job: ``cluster.job_script()`` is the submit
description. dask-jobqueue and distributed are imported only when a cluster is built.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import socket
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casa.compute.base import ComputeBackend, Scaling
from casa.compute.on_dask import DaskOpenBackend, on_job_cluster
from casa.compute.tls import TLSFiles, write_cluster_certificate
from casa.config import HTCondorSection
from casa.data.sources import SITE_CACHE_ENV
from casa.errors import ConfigError, UsageError
from casa.worker.dashboard_guard import WORKER_ARGS, guard_this_process

if TYPE_CHECKING:
    from dask_jobqueue import HTCondorCluster
    from distributed.security import Security

    from casa.facility import Facility

#: The section name in ``casa.toml``.
SECTION = "htcondor"
#: HTCondor's name for the job's scratch directory, expanded by the job's shell.
SCRATCH = "$_CONDOR_SCRATCH_DIR"


def htcondor_settings(ctx: Facility) -> HTCondorSection:
    """The ``[htcondor]`` settings of this facility."""
    return ctx.config.htcondor


# -- TLS -------------------------------------------------------------------------------------


def _site_tls(settings: HTCondorSection) -> TLSFiles | None:
    """The TLS files named in casa.toml, or None when casa should make its own."""
    if not (settings.tls_ca_file or settings.tls_cert_file or settings.tls_key_file):
        return None
    if not (settings.tls_ca_file and settings.tls_cert_file):
        raise ConfigError(
            "htcondor.tls_ca_file and htcondor.tls_cert_file are both needed when either is "
            "set (or leave all three empty for a per-cluster certificate)"
        )
    cert = Path(settings.tls_cert_file)
    files = TLSFiles(Path(settings.tls_ca_file), cert, Path(settings.tls_key_file or cert))
    for key, path in [("tls_ca_file", files.ca), ("tls_cert_file", files.cert),
                      ("tls_key_file", files.key)]:  # fmt: skip
        if not path.is_file():
            raise ConfigError(f"htcondor.{key} = {str(path)!r} is not a file")
    return files


# -- the token -------------------------------------------------------------------------------


def job_token_file(token_file: str | os.PathLike | None = None, spill: Path | None = None) -> Path:
    """The data-token file to send with each job: the one given, or WLCG discovery's.

    A token found only in ``$BEARER_TOKEN`` (as in a notebook on Kubernetes) is written,
    readable by its owner only, into the private folder ``spill``, since jobs receive files.
    """
    from casa.auth.tokens import (
        discover_token,
        discovery_locations,
        store_token,
        token_file_name,
    )

    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise UsageError(f"token file {path} does not exist; get one with 'casa token issue'")
        return path.absolute()
    found = discover_token()
    if found is None:
        raise UsageError(
            "no bearer token found to give the HTCondor workers (looked in "
            f"{', '.join(discovery_locations())}); get one with 'casa token issue'"
        )
    if found.source == "$BEARER_TOKEN":
        if spill is None:
            raise UsageError(
                "HTCondor workers receive the token as a file, but yours is only in "
                "$BEARER_TOKEN: store it with 'casa token issue' or set $BEARER_TOKEN_FILE"
            )
        return store_token(found.token, spill / token_file_name()).absolute()
    return Path(found.source).absolute()


# -- the cluster -----------------------------------------------------------------------------


@functools.cache
def _cluster_class() -> type[HTCondorCluster]:
    """:class:`CasaHTCondorCluster`, defined when first needed (dask-jobqueue is heavy)."""
    from dask_jobqueue import HTCondorCluster
    from dask_jobqueue.htcondor import HTCondorJob

    class CasaHTCondorCluster(HTCondorCluster):
        """dask-jobqueue's HTCondorCluster whose workers use the TLS files sent with their job.

        dask-jobqueue gives workers the scheduler's own file paths; at a site these do not
        exist on the worker nodes, so the workers' ``--tls-*`` options name the copies
        transferred with each job.
        """

        def __init__(self, *, worker_security: Security, **kwargs: Any):
            self._casa_worker_security = worker_security
            super().__init__(**kwargs)

        def _get_worker_security(self, security: Security | None) -> Security:
            """The workers' TLS files in the job's scratch directory."""
            return self._casa_worker_security

        @property
        def _dummy_job(self) -> HTCondorJob:
            """The job ``job_script()`` shows, addressed as real jobs are: to the contact address.

            dask-jobqueue submits jobs with the scheduler's contact address but builds the
            script it shows with the listening one; casa shows what the workers really get.
            """
            contact = getattr(getattr(self, "scheduler", None), "contact_address", None)
            if not contact:
                return super()._dummy_job
            return self.job_cls(contact, name="dummy-name", **self._job_kwargs)

    CasaHTCondorCluster.__module__ = __name__
    CasaHTCondorCluster.__qualname__ = "CasaHTCondorCluster"
    return CasaHTCondorCluster


def __getattr__(name: str) -> Any:
    """``CasaHTCondorCluster``, the cluster class, imported on first use."""
    if name == "CasaHTCondorCluster":
        return _cluster_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _input_files(paths: list[Path]) -> list[Path]:
    """The files to transfer, each once; two different files must not share a name."""
    chosen: dict[str, Path] = {}
    for path in paths:
        previous = chosen.setdefault(path.name, path)
        if previous.resolve() != path.resolve():
            raise ConfigError(
                f"{previous} and {path} would both arrive in the job as {path.name!r}: give "
                "the token and TLS files different names"
            )
    return list(chosen.values())


def cluster_kwargs(
    ctx: Facility,
    tls: TLSFiles,
    token_file: Path,
    *,
    settings: HTCondorSection | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :class:`CasaHTCondorCluster` for this facility and user."""
    from dask_jobqueue.htcondor import quote_environment

    from casa.config import parse_size

    s = settings or htcondor_settings(ctx)
    user = user or _current_user()
    listen = s.listen_host or "0.0.0.0"
    port = s.scheduler_port or _free_port(listen)
    contact = s.contact_host or ctx.config.facility.host
    contact_address = f"tls://{contact}:{port}"
    cache_url = s.cache_url or ctx.config.worker_cache_url

    files = _input_files([token_file, tls.ca, tls.cert, tls.key])
    transfer = ",".join(str(p) for p in files)
    job_token = f"{SCRATCH}/{token_file.name}"
    private = " ".join(f'"{SCRATCH}/{p.name}"' for p in _input_files([token_file, tls.key]))
    directives: dict[str, Any] = {
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
        "transfer_input_files": transfer,
        "encrypt_input_files": transfer,
        "transfer_output_files": "",  # nothing comes back: results travel through Dask
        "environment": f'"{quote_environment({SITE_CACHE_ENV: cache_url})}"',
        "+DaskSchedulerAddress": f'"{contact_address}"',
        "Stream_Output": "False",
        "Stream_Error": "False",
    }
    if s.accounting_group:
        directives["+AccountingGroup"] = f'"{s.accounting_group}.{user}"'
        directives["+AccountingGroupUser"] = f'"{user}"'
    if s.worker_image:
        directives["universe"] = "container"
        directives["container_image"] = s.worker_image
    for line in s.extra_directives:
        key, _, value = line.partition("=")
        directives[key.strip()] = value.strip()

    submit_extra: list[str] = []
    if s.pool:
        submit_extra += ["-pool", s.pool]
    if s.schedd:
        submit_extra += ["-name", s.schedd]
    return {
        "cores": s.worker_cores,
        "memory": parse_size(s.worker_memory),
        "disk": parse_size(s.worker_disk),
        "python": s.python,
        "protocol": "tls://",
        "security": tls.security(),
        "worker_security": tls.in_job(SCRATCH),
        "scheduler_options": {
            "host": listen,
            "port": port,
            "contact_address": contact_address,
            "dashboard_address": f"{listen}:{s.dashboard_port}",
        },
        "job_extra_directives": directives,
        "job_script_prologue": [
            # WLCG discovery reads $BEARER_TOKEN first: only the transferred file may count.
            "unset BEARER_TOKEN",
            f'export BEARER_TOKEN_FILE="{job_token}"',
            f"chmod 0600 {private}",
        ],
        "local_directory": SCRATCH,
        # A remote schedd needs the input files spooled to it (Coffea-casa: condor_submit -spool).
        "submit_command_extra": submit_extra + (["-spool"] if s.schedd else []),
        "cancel_command_extra": submit_extra,
        "job_name": f"casa-worker-{user}",
        "worker_extra_args": WORKER_ARGS,
    }


def htcondor_cluster(
    ctx: Facility,
    *,
    settings: HTCondorSection | None = None,
    token_file: str | os.PathLike | None = None,
    user: str | None = None,
    workdir: str | os.PathLike | None = None,
    **overrides: Any,
) -> HTCondorCluster:
    """A Dask cluster whose workers are HTCondor jobs; its TLS scheduler starts at once.

    ``workdir`` (default: a new private temporary folder, removed with the cluster) holds a
    per-cluster certificate when casa.toml names no TLS files, and the token file when the
    token is only in ``$BEARER_TOKEN``. ``overrides`` go to dask-jobqueue unchanged.
    """
    s = settings or htcondor_settings(ctx)
    tls = _site_tls(s)
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="casa-htcondor-"))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if tls is None:
            tls = write_cluster_certificate(folder / "tls")
        token = job_token_file(token_file, spill=folder)
        kwargs = cluster_kwargs(ctx, tls, token, settings=s, user=user)
        kwargs.update(overrides)
        guard_this_process()  # the dashboard answers the link casa prints only
        cluster = _cluster_class()(**kwargs)
    except BaseException:
        if not workdir:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if not workdir:  # the key and any token copy go when the cluster does
        weakref.finalize(cluster, shutil.rmtree, folder, True)
    return cluster


# -- casa run --cluster htcondor ---------------------------------------------------------------


class HTCondorBackend(ComputeBackend):
    """coffea's DaskExecutor on workers that are HTCondor jobs (``casa run --cluster htcondor``).

    The scheduler runs in this process, as with :func:`htcondor_cluster`; the workers are
    cancelled (``condor_rm``) when the backend closes. Options: ``wait_seconds`` (for the
    jobs to connect) and any keyword of :func:`htcondor_cluster` (``token_file``...).
    """

    name = "htcondor"
    ships_analysis_folder = True

    def __init__(
        self, facility: Facility | None = None, size: Scaling | None = None, *,
        wait_seconds: float = 300.0, **overrides: Any,
    ):  # fmt: skip
        super().__init__(facility, size)
        self.ctx = self._needs_facility()
        self.wait_seconds = wait_seconds
        self.overrides = overrides
        # This host submits the jobs: say so before anything starts.
        if shutil.which("condor_submit") is None:
            raise UsageError(
                "--cluster htcondor submits jobs with condor_submit, which is not installed "
                "here: run casa on a host of the HTCondor pool (see docs/deployment.md), or "
                "use --cluster gateway"
            )

    def default_workers(self) -> int:
        """Two jobs."""
        return 2

    def start(self, stack: contextlib.ExitStack) -> DaskOpenBackend:
        """Submit the jobs, wait until they connect; renew their token while open."""
        from casa.worker.token import TokenRenewer, renewal_period

        source = worker_token_source(self.ctx, self.overrides.get("token_file"))
        period = renewal_period(self.ctx.config.issuer.token_lifetime)
        opened = stack.enter_context(on_job_cluster(
            htcondor_cluster(self.ctx, **self.overrides), "HTCondor", self.size.wait_for,
            self.wait_seconds, "see condor_q -better-analyze and the jobs' logs",
        ))  # fmt: skip
        stack.enter_context(TokenRenewer(opened.client, source, period))
        return opened


def worker_token_source(
    ctx: Facility, token_file: str | os.PathLike | None = None
) -> Callable[[], str | None]:
    """Where renewed tokens for the workers come from: the token file the caller named (they
    keep it fresh), else the caller's own token from the issuer."""
    from casa.worker.token import caller_token_source, file_token_source

    return file_token_source(token_file) if token_file else caller_token_source(ctx)
