"""Dask workers as Slurm jobs: dask-jobqueue's ``SLURMCluster`` with TLS and the user's token.

The scheduler runs where the user is (``casa run``, a notebook) on a host that can submit
to Slurm (``sbatch`` and ``scancel`` work there); each worker is one batch job:

- TLS only: the scheduler, the workers and the client share one per-cluster CA,
  certificate and key that casa writes (key mode 0600) into a folder the worker nodes also
  see (a shared filesystem, as at any Slurm site; jobs run as the submitting user);
- the user's data token reaches the workers as ``BEARER_TOKEN`` in the environment that
  ``sbatch`` exports to the job: it is given to ``sbatch`` alone, never written into the job
  script, its arguments or the scheduler's own environment; during a run it is renewed
  through a worker plugin (:mod:`casa.worker.token`);
- ``CASA_CACHE_URL`` names the site's XCache the workers read ``root://`` through;
- ``interface`` names the workers' network interface and ``scheduler_interface`` the one the
  scheduler listens on, so hosts without a default route still find each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob

from casa.compute.base import ComputeBackend, Scaling
from casa.compute.on_dask import DaskOpenBackend, on_job_cluster
from casa.compute.tls import write_cluster_certificate
from casa.data.sources import SITE_CACHE_ENV
from casa.facility import Facility
from casa.worker.dashboard_guard import WORKER_ARGS, guard_this_process

WORKER_WAIT_SECONDS = 120


class CasaSLURMJob(SLURMJob):
    """A Slurm job whose ``sbatch`` runs with extra environment variables for the worker."""

    def __init__(self, *args: Any, submit_env: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.submit_env = submit_env or {}

    async def _submit_job(self, script_filename: str) -> str:
        """Run ``sbatch`` with the worker's variables added to the exported environment."""
        env = {k: v for k, v in os.environ.items() if k != "BEARER_TOKEN_FILE"}
        env.update(self.submit_env)
        return await self._call([*shlex.split(self.submit_command), script_filename], env=env)


class CasaSLURMCluster(SLURMCluster):
    """dask-jobqueue's SLURMCluster submitting :class:`CasaSLURMJob` jobs."""

    job_cls = CasaSLURMJob


class SlurmBackend(ComputeBackend):
    """coffea's DaskExecutor on workers that are Slurm jobs submitted from here, over TLS.

    With a facility, the partition, the interface and the cache come from its ``[slurm]``
    and ``[site]`` unless given. (A gateway with ``gateway.backend = "slurm"`` makes users'
    clusters of Slurm jobs instead: :class:`casa.services.gateway.server.CasaSlurmBackend`.)
    """

    name = "slurm"
    ships_analysis_folder = True
    options = ("token", "cache_url", "queue", "cores", "memory", "walltime", "interface",
               "scheduler_interface", "python", "workdir", "job_extra_directives",
               "wait_seconds", "token_source")  # fmt: skip

    def __init__(
        self,
        facility: Facility | None = None,
        size: Scaling | None = None,
        *,
        token: str | None = None,
        cache_url: str = "",
        queue: str | None = None,
        cores: int = 1,
        memory: str = "1GB",
        walltime: str = "01:00:00",
        interface: str | None = None,
        scheduler_interface: str | None = None,
        python: str = sys.executable,
        workdir: str | os.PathLike | None = None,
        job_extra_directives: list[str] | None = None,
        wait_seconds: float = WORKER_WAIT_SECONDS,
        token_source: Callable[[], str | None] | None = None,
    ):
        super().__init__(facility, size)
        if facility is not None:
            site = facility.config.slurm
            cache_url = cache_url or facility.config.worker_cache_url
            queue = queue or site.partition or None
            interface = interface or site.interface or None
        self.token = token
        self.cache_url = cache_url
        self.queue = queue
        self.cores = cores
        self.memory = memory
        self.walltime = walltime
        self.interface = interface
        self.scheduler_interface = scheduler_interface
        self.python = python
        self.workdir = Path(workdir) if workdir else None
        self.job_extra_directives = list(job_extra_directives or [])
        self.wait_seconds = wait_seconds
        self.token_source = token_source

    def _token(self) -> str | None:
        """The workers' token now: the one given, else the one WLCG discovery finds."""
        from casa.auth.tokens import discover_token

        if self.token is not None:
            return self.token
        found = discover_token()
        return found.token if found else None

    def renewal_source(self) -> Callable[[], str | None] | None:
        """Where renewed tokens come from: ``token_source`` if given; with no token given,
        WLCG discovery again (a file the hub or ``casa token issue`` renews); else none."""
        if self.token_source is not None:
            return self.token_source
        return self._token if self.token is None else None

    def worker_environment(self) -> dict[str, str]:
        """The variables each worker job gets: the data token and the cache's URL."""
        env: dict[str, str] = {}
        token = self._token()
        if token:
            env["BEARER_TOKEN"] = token
        if self.cache_url:
            env[SITE_CACHE_ENV] = self.cache_url
        return env

    def cluster(self, folder: Path) -> CasaSLURMCluster:
        """A cluster (its TLS scheduler started, no workers yet) keeping its files in ``folder``."""
        tls = write_cluster_certificate(folder / "tls")
        logs = folder / "logs"
        logs.mkdir(exist_ok=True)
        scheduler_options: dict[str, Any] = {"dashboard_address": ":0"}
        if self.scheduler_interface:
            scheduler_options["interface"] = self.scheduler_interface
        guard_this_process()  # the dashboard answers the link casa prints only
        return CasaSLURMCluster(
            queue=self.queue,
            cores=self.cores,
            processes=1,
            memory=self.memory,
            walltime=self.walltime,
            python=self.python,
            interface=self.interface,
            protocol="tls://",
            security=tls.security(),
            scheduler_options=scheduler_options,
            local_directory=str(folder),
            log_directory=str(logs),
            job_extra_directives=self.job_extra_directives,
            job_name="casa-worker",
            submit_env=self.worker_environment(),
            worker_extra_args=WORKER_ARGS,
            silence_logs=logging.CRITICAL,
        )

    def start(self, stack: contextlib.ExitStack) -> DaskOpenBackend:
        """Submit the size's jobs, wait for them; cancel them (and remove a temporary
        folder) on close. While open, the workers' token is renewed a third of its
        lifetime apart from :meth:`renewal_source`."""
        folder = self.workdir or Path(tempfile.mkdtemp(prefix="casa-slurm-"))
        folder.mkdir(parents=True, exist_ok=True)
        if self.workdir is None:
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        where = f"see 'squeue' and the job logs in {folder / 'logs'}"
        opened = stack.enter_context(on_job_cluster(
            self.cluster(folder), "Slurm", self.size.wait_for, self.wait_seconds, where
        ))  # fmt: skip
        stack.enter_context(self._renewing(opened))
        return opened

    def _renewing(self, opened: DaskOpenBackend) -> contextlib.AbstractContextManager:
        """Renew the workers' token while ``opened`` is in use (nothing without a source)."""
        from casa.worker.token import TokenRenewer, lifetime_of, renewal_period

        source, token = self.renewal_source(), self._token()
        if source is None or not token or lifetime_of(token) <= 0:
            return contextlib.nullcontext()
        return TokenRenewer(opened.client, source, renewal_period(lifetime_of(token)))
