"""casa's parts inside ``dask-gateway-server``: who the user is, and what they may start.

Loaded by the gateway process through its generated configuration
(``services/gateway/dask_gateway_config.py``):

- :class:`CasaAuthenticator` accepts the facility's gateway tokens (ES256 JWTs from the
  casa issuer, audience ``NAME-gateway``) and names the user after their ``sub`` claim;
- :class:`CasaLocalBackend` runs each cluster's scheduler and workers as local processes,
  enforces casa's per-user limits (clusters, cores, memory), and gives every cluster the
  data token of the user who owns it, minted for that user by the issuer off the event loop
  (:class:`OwnerDataToken`) and renewed while the cluster runs (:class:`WorkerTokenRenewal`);
- :class:`FixedLocalBackend` is dask-gateway's ``LocalBackend`` (processes under each
  user's own account) with its ``setup_working_directory`` bug fixed: the shipped method
  extends a list with a path string, so it later changes the owner of ``/``;
- :class:`CasaSlurmBackend` is dask-gateway's ``SlurmBackend`` (scheduler and workers are
  Slurm jobs of the user) with casa's limits, without ``sudo``, and with the site's
  ``slurm.conf`` and network interface.

Each cluster's dashboard answers its owner and admins only (:mod:`casa.services.gateway.dashboards`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import sys
from functools import partial
from pathlib import Path

from dask_gateway_server.auth import Authenticator, User, unauthorized
from dask_gateway_server.backends.base import Backend, PublicException
from dask_gateway_server.backends.db_base import DBBackendBase, JobStatus
from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend
from dask_gateway_server.backends.local import LocalBackend, UnsafeLocalBackend
from dask_gateway_server.options import Float, Integer, Options, String
from dask_gateway_server.traitlets import MemoryLimit
from dask_gateway_server.utils import FrozenAttrDict, format_bytes
from traitlets import Callable, Dict, Unicode
from traitlets import Float as FloatTrait
from traitlets import Integer as IntegerTrait

from casa.auth.tokens import verify_token
from casa.lab.environments import check_cluster_env
from casa.services.gateway.dashboards import DashboardAccess
from casa.services.gateway.logs import keep_logs, slurm_log_name
from casa.services.processes import forget_process, is_recorded, record_process
from casa.workarounds import owned_working_directory

GIB = 1 << 30


class CasaAuthenticator(Authenticator):
    """Authenticate API requests with a facility gateway token (``Authorization: Bearer``)."""

    issuer = Unicode(help="The ``iss`` every accepted token must carry.", config=True)
    audience = Unicode(help="The ``aud`` every accepted token must carry.", config=True)
    public_key_file = Unicode(help="PEM file with the issuer's public key.", config=True)

    async def authenticate(self, request):
        """The user named by a valid token's ``sub``; 401 otherwise."""
        import jwt

        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Bearer")
        with open(self.public_key_file, "rb") as f:
            key = f.read()
        try:
            claims = verify_token(token, key, issuer=self.issuer, audience=self.audience)
        except jwt.PyJWTError as e:
            self.log.info("Refused a gateway token: %s", e)
            raise unauthorized("Bearer") from None
        return User(claims["sub"], groups=[], admin=False)


def cluster_options(
    max_worker_cores: float, max_worker_memory: int, environment: dict[str, str] | None = None,
    default_env: str | None = None,
) -> Options:  # fmt: skip
    """The options users choose per cluster.

    ``environment`` holds further variables for every cluster, such as ``CASA_CACHE_URL``
    (the cache the site's workers read through). The owner's data token is not added here:
    dask-gateway calls this handler on its event loop, and minting waits for the issuer
    (:class:`OwnerDataToken` adds it). ``python_env`` is the Python environment the
    cluster's scheduler and workers run from (casa's clients give their own, so that
    workers import what the user installed: :mod:`casa.lab.environments`); empty, or
    ``default_env``, is the facility's. Without ``default_env`` (Kubernetes, whose pods run
    an image) the option is not offered.
    """

    def handler(options, user):
        config = {
            "worker_cores": options.worker_cores,
            "worker_threads": max(1, int(options.worker_cores)),
            "worker_memory": int(options.worker_memory * GIB),
            "environment": dict(environment or {}),
        }
        chosen = getattr(options, "python_env", "") if default_env is not None else ""
        if chosen and chosen != default_env:
            prefix = check_cluster_env(chosen, user.name)
            config["scheduler_cmd"] = str(prefix / "bin" / "dask-scheduler")
            config["worker_cmd"] = str(prefix / "bin" / "dask-worker")
        return config

    fields = [
        Integer("worker_cores", 1, min=1, max=max(1, int(max_worker_cores)), label="Worker cores"),
        Float("worker_memory", 2, min=0.25, max=max_worker_memory / GIB, label="Worker memory (GiB)"),
    ]  # fmt: skip
    if default_env is not None:
        fields.append(String("python_env", "", label="Python environment (empty: the facility's)"))
    return Options(*fields, handler=handler)


def _amount(value: float, unit: str) -> str:
    """``1 core``, ``2.5 cores`` or ``2.00 GiB``."""
    if unit == "memory":
        return format_bytes(int(value))
    return f"{value:g} core" + ("" if value == 1 else "s")


class UserLimits(DBBackendBase):
    """Per-user limits across all of a user's clusters (dask-gateway only limits one cluster).

    Cores and memory count the workers of all of a user's clusters (schedulers are bounded
    by ``max_clusters_per_user``). A request for more workers than the limits leave is
    refused whole, naming the limit, before any worker starts: dask-gateway itself would
    quietly start as many as fit.
    """

    max_clusters_per_user = IntegerTrait(2, help="Active clusters one user may have.", config=True)
    max_cores_per_user = IntegerTrait(
        0, help="Cores all of one user's workers may use (0: no limit).", config=True
    )
    max_memory_per_user = MemoryLimit(
        0, help="Memory all of one user's workers may use (0: no limit).", config=True
    )
    limit_origins = Dict(
        help="Where each limit comes from, by key, for messages (such as "
        "{'max_cores_per_user': 'the default: this host's cores'}).",
        config=True,
    )

    def _usage(self, username: str, exclude: str | None = None) -> tuple[float, int, int]:
        """Cores, bytes and clusters in use by ``username``'s active clusters' workers."""
        cores = memory = count = 0
        for cluster in self.db.list_clusters(username=username):
            if cluster.name == exclude:
                continue
            count += 1
            cfg = cluster.config
            get = cfg.get if isinstance(cfg, dict) else partial(getattr, cfg)
            n = len(cluster.active_workers())
            cores += n * get("worker_cores", 1)
            memory += n * get("worker_memory", 2 * GIB)
        return cores, memory, count

    def _bounds(self, username: str, exclude: str | None) -> list[tuple[str, float, float, str]]:
        """(key, limit, in use by the user's other clusters, unit) of each limit that is set."""
        cores, memory, _ = self._usage(username, exclude)
        out = []
        if self.max_cores_per_user:
            out.append(("max_cores_per_user", self.max_cores_per_user, cores, "cores"))
        if self.max_memory_per_user:
            out.append(("max_memory_per_user", self.max_memory_per_user, memory, "memory"))
        return out

    def _room(self, cluster) -> list[tuple[str, float, float, str, float, int]]:
        """Per limit set: key, limit, use by the owner's other clusters, unit, one worker's
        share and how many workers of ``cluster`` fit."""
        cfg = cluster.config
        size = {"cores": cfg["worker_cores"], "memory": cfg["worker_memory"]}
        return [
            (key, limit, used, unit, size[unit], max(0, int((limit - used) // size[unit])))
            for key, limit, used, unit in self._bounds(cluster.username, exclude=cluster.name)
        ]

    def _refusal(self, cluster, want: int) -> str | None:
        """Why ``cluster`` may not have ``want`` workers, or None when it may."""
        for key, limit, used, unit, share, fits in self._room(cluster):
            if want <= fits:
                continue
            elsewhere = f", {_amount(used, unit)} used by other clusters" if used else ""
            origin = f"; {self.limit_origins[key]}" if key in self.limit_origins else ""
            return (
                f"{want} workers of {_amount(share, unit)} each exceed user "
                f"{cluster.username}'s limit of {_amount(limit, unit)} (gateway.{key} in "
                f"casa.toml{origin}{elsewhere}): ask for at most {fits} workers, or raise "
                f"gateway.{key}"
            )
        return None

    async def start_cluster(self, user, cluster_options):
        """Refuse a cluster over the user's limits, naming the limit."""
        _, _, count = self._usage(user.name)
        if count >= self.max_clusters_per_user:
            raise PublicException(
                f"user {user.name} has {count} active cluster(s), the limit "
                f"(gateway.max_clusters_per_user) is {self.max_clusters_per_user}: stop one first "
                "(casa cluster stop NAME)"
            )
        return await super().start_cluster(user, cluster_options)

    async def process_cluster_options(self, user, cluster_options):
        """Bound this cluster by what the user's limits leave after their other clusters."""
        options, config = await super().process_cluster_options(user, cluster_options)
        size = {"cores": config.worker_cores, "memory": config.worker_memory}
        scheduler = {"cores": config.scheduler_cores, "memory": config.scheduler_memory}
        for key, limit, used, unit in self._bounds(user.name, exclude=None):
            left = limit - used
            if left < size[unit]:
                raise PublicException(
                    f"user {user.name}'s workers use {_amount(used, unit)} of "
                    f"{_amount(limit, unit)} (gateway.{key}); a worker of this cluster needs "
                    f"{_amount(size[unit], unit)}: stop or scale down another cluster first"
                )
            # dask-gateway's own cap (its heartbeat check) counts the scheduler too.
            if unit == "cores":
                config.cluster_max_cores = float(left + scheduler[unit])
            else:
                config.cluster_max_memory = int(left + scheduler[unit])
        return options, config

    async def get_cluster(self, cluster_name, wait=False):
        """The cluster, without the per-cluster worker cap its scale and adapt routes read.

        Those routes would clamp a request to the cap; with it hidden the request reaches
        :meth:`forward_message_to_scheduler`, which refuses it whole instead.
        """
        model = await super().get_cluster(cluster_name, wait=wait)
        if model is not None and "cluster_max_workers" in model.config:
            kept = {k: v for k, v in model.config.items() if k != "cluster_max_workers"}
            model.config = FrozenAttrDict(kept)
        return model

    async def forward_message_to_scheduler(self, cluster, msg):
        """Pass a scale or adapt request on, or refuse it whole when it exceeds a limit."""
        internal = self.db.get_cluster(cluster.name)
        want = 0
        if msg.get("op") == "scale":
            want = msg["count"]
        elif msg.get("op") == "adapt" and msg.get("maximum") is None:
            # No maximum asked: adapt up to what the limits allow (dask-gateway's default).
            fits = [room[-1] for room in self._room(internal)]
            cap = internal.config.get("cluster_max_workers")
            msg = {**msg, "maximum": min(fits + ([cap] if cap is not None else []), default=None)}
            want = msg.get("minimum") or 0
        elif msg.get("op") == "adapt":
            want = max(msg["maximum"], msg.get("minimum") or 0)
        refusal = self._refusal(internal, want) if internal is not None else None
        if refusal:
            raise PublicException(refusal)
        return await super().forward_message_to_scheduler(cluster, msg)


class OwnerDataToken(Backend):
    """Gives every new cluster the data token of the user who owns it (``BEARER_TOKEN``).

    The gateway may mint for any user (it runs as the facility's account, beside the
    issuer). Minting waits for the issuer's answer over its Unix socket, up to
    :data:`casa.auth.issuer_client.ANSWER_TIMEOUT`: it runs in an executor thread, never on
    the gateway's event loop, which meanwhile serves every other request. This is why the
    token is added here, in the backend's async ``process_cluster_options``, and not by the
    cluster options' handler, which dask-gateway calls synchronously on its loop.
    """

    data_token = Callable(
        None, allow_none=True, help="Mints a user's data token: f(username) -> str.", config=True
    )

    async def mint_data_token(self, username: str) -> str:
        """``username``'s data token, minted in an executor thread (off the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.data_token, username)

    async def process_cluster_options(self, user, cluster_options):
        """The cluster's configuration (limits checked first), with its owner's data token."""
        options, config = await super().process_cluster_options(user, cluster_options)
        if self.data_token is not None:
            try:
                token = await self.mint_data_token(user.name)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the issuer is down or refuses: one sentence, as before
                raise PublicException(str(e)) from None
            config.environment = {**config.environment, "BEARER_TOKEN": token}
        return options, config


class WorkerTokenRenewal(OwnerDataToken, DBBackendBase):
    """Renews the data token of every running cluster's workers, a third of its lifetime apart.

    Workers start with their owner's token in their environment (:class:`OwnerDataToken`);
    it would expire after ``issuer.token_lifetime`` and a reused cluster could read nothing
    more. The gateway mints each owner's token again and gives it to the cluster's workers
    as a worker plugin (:mod:`casa.worker.token`), through the cluster's scheduler and with
    the cluster's own TLS credentials. A restarted gateway renews at once the clusters its
    database lists.
    """

    token_renewal_period = FloatTrait(
        0.0, help="Seconds between renewals of running clusters' tokens (0: never).", config=True
    )

    async def setup(self, app):
        """Start as dask-gateway does, then the renewal loop."""
        await super().setup(app)
        self._renewal = None
        if self.data_token is not None and self.token_renewal_period > 0:
            self._renewal = asyncio.ensure_future(self._renew_forever())

    async def cleanup(self):
        """Stop the renewal loop, then clean up as dask-gateway does."""
        renewal = getattr(self, "_renewal", None)
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        await super().cleanup()

    async def _renew_forever(self) -> None:
        while True:
            await self.renew_tokens()
            await asyncio.sleep(self.token_renewal_period)

    async def renew_tokens(self) -> None:
        """Give every running cluster's workers a freshly minted token of their owner."""
        from casa.data.sources import scrub
        from casa.worker.token import push_to_scheduler

        for cluster in list(self.db.active_clusters()):
            if cluster.status != JobStatus.RUNNING or not cluster.scheduler_address:
                continue
            try:
                token = await self.mint_data_token(cluster.username)
                await asyncio.wait_for(
                    push_to_scheduler(
                        cluster.scheduler_address, cluster.tls_cert.decode(),
                        cluster.tls_key.decode(), token,
                    ),
                    timeout=30,
                )  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.warning(
                    "Could not renew the data token of cluster %s: %s", cluster.name,
                    scrub(str(e)) or type(e).__name__,
                )  # fmt: skip
            else:
                self.log.info("Renewed the data token of cluster %s", cluster.name)


class RecordedProcesses(LocalBackend):
    """Records every scheduler and worker it starts in ``process_directory``.

    They run in sessions of their own, outside the gateway's process group: a gateway that
    is killed (or that ``casa down`` stops before it has stopped its clusters: it first
    waits up to 15 s for its open connections) would leave them running. ``casa down``
    stops the recorded ones that are still alive (``GatewayService.strays``).
    """

    process_directory = Unicode(
        "", help="Where each started process's PID is recorded (empty: nowhere).", config=True
    )

    async def start_process(self, cluster, cmd, env, name):
        """Start as LocalBackend does, then record the PID."""
        pid = await super().start_process(cluster, cmd, env, name)
        if self.process_directory:
            record_process(Path(self.process_directory), pid)
        return pid

    async def stop_process(self, pid):
        """Stop as LocalBackend does, then drop the record.

        After a restart the gateway's database names processes started by its previous run;
        one that is gone (its PID perhaps reused by another program) is not signalled.
        """
        directory = Path(self.process_directory) if self.process_directory else None
        if directory is not None and not is_recorded(directory, pid):
            self.log.info("Process %d is no longer running", pid)
            forget_process(directory, pid)
            return
        await super().stop_process(pid)
        if directory is not None:
            forget_process(directory, pid)


class ClusterLogs(Backend):
    """Keeps each cluster's logs when it stops or fails (:mod:`casa.services.gateway.logs`);
    each backend says where its clusters' logs are."""

    logs_directory = Unicode(
        "", help="Where stopped clusters' logs are kept (empty: not kept).", config=True
    )

    def keep_cluster_logs(self, cluster, workdir: str, **layout) -> None:
        """Keep ``cluster``'s logs from ``workdir`` (``layout``: :func:`keep_logs`'s
        ``folder`` and ``rename``); a failure is logged, never raised."""
        if not self.logs_directory:
            return
        try:
            keep_logs(Path(workdir), Path(self.logs_directory), cluster.username, **layout)
        except OSError as e:
            self.log.warning("Could not keep the logs of cluster %s: %s", cluster.name, e)


class KeptLogs(ClusterLogs, LocalBackend):
    """The local backends' clusters: their logs are in their working directory's ``logs/``."""

    async def do_stop_cluster(self, cluster):
        """Stop the scheduler, keep the logs, then remove the working directory."""
        pid = cluster.state.get("pid")
        if pid is not None:
            await self.stop_process(pid)
        workdir = cluster.state.get("workdir")
        if workdir is None:
            return
        self.keep_cluster_logs(cluster, workdir)
        self.cleanup_working_directory(workdir)


class CasaLocalBackend(
    DashboardAccess, WorkerTokenRenewal, UserLimits, KeptLogs, RecordedProcesses,
    UnsafeLocalBackend,
):  # fmt: skip
    """Clusters as local processes of the facility's account, within casa's per-user limits."""


class FixedLocalBackend(
    DashboardAccess, WorkerTokenRenewal, UserLimits, KeptLogs, RecordedProcesses, LocalBackend
):
    """dask-gateway's LocalBackend (each user's own account) with its working-directory bug fixed."""

    def setup_working_directory(self, cluster):  # pragma: no cover - needs other accounts
        """Create the cluster's folders and TLS files, owned by the cluster's user only."""
        return owned_working_directory(self, cluster)

    def set_file_permissions(self, paths, username):  # pragma: no cover - needs other accounts
        """chown exactly the cluster's own files, refusing anything outside its folder."""
        account = pwd.getpwnam(username)
        root = os.path.realpath(paths[0])
        for p in paths:
            real = os.path.realpath(p)
            if real != root and not real.startswith(root + os.sep):
                raise RuntimeError(f"refusing to change the owner of {p}: outside {root}")
            os.chown(p, account.pw_uid, account.pw_gid)


class CasaSlurmBackend(DashboardAccess, WorkerTokenRenewal, UserLimits, ClusterLogs, SlurmBackend):
    """dask-gateway's SlurmBackend: each cluster's scheduler and workers are Slurm jobs.

    What casa changes:

    - no ``sudo``: the gateway runs as root and starts dask-gateway's job launcher under
      the user's account with ``runuser`` (or directly, when the gateway runs as that user);
    - ``slurm.conf``: ``sbatch``, ``squeue`` and ``scancel`` get ``SLURM_CONF`` when
      the site names its own configuration;
    - ``interface``: schedulers and workers listen on that network interface (nodes
      without a default route cannot find their own address otherwise);
    - ``scheduler_partition``: schedulers may run on other nodes than workers.

    The job environment (the user's data token among it) reaches ``sbatch`` through the
    launcher's standard input and ``--export``, never the job script.
    """

    slurm_conf = Unicode("", help="The site's slurm.conf (empty: Slurm's default).", config=True)
    interface = Unicode("", help="The network interface jobs listen on.", config=True)
    scheduler_partition = Unicode(
        "", help="The partition of scheduler jobs (empty: the cluster's partition).", config=True
    )
    launcher_python = Unicode(
        sys.executable, help="The Python that runs dask-gateway's job launcher.", config=True
    )

    async def do_stop_cluster(self, cluster):
        """Keep the jobs' logs from the staging folder (the workers' jobs have ended), then
        cancel the scheduler's job and remove the folder, as dask-gateway does."""
        staging = cluster.state.get("staging_dir")
        if staging:
            self.keep_cluster_logs(cluster, staging, folder=".", rename=slurm_log_name)
        await super().do_stop_cluster(cluster)

    def _slurm_env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}

    def get_submit_cmd_env_stdin(self, cluster, worker=None):
        """sbatch's command, with the scheduler's partition for scheduler jobs."""
        cmd, env, script = super().get_submit_cmd_env_stdin(cluster, worker)
        if worker is None and self.scheduler_partition:
            cmd = [a for a in cmd if not a.startswith("--partition=")]
            cmd.insert(2, "--partition=" + self.scheduler_partition)
        return cmd, env, script

    def _listen_args(self, args: list[str]) -> list[str]:
        """Replace ``--host 0.0.0.0`` by ``--interface IFACE`` when an interface is set."""
        if not self.interface:
            return args
        out = list(args)
        if "--host" in out:
            i = out.index("--host")
            out[i : i + 2] = ["--interface", self.interface]
        return out

    def get_scheduler_command(self, cluster):
        """dask-gateway's scheduler command, listening on ``interface``."""
        return self._listen_args(super().get_scheduler_command(cluster))

    def get_worker_command(self, cluster, worker_name, scheduler_address=None):
        """dask-gateway's worker command, listening on ``interface``."""
        cmd = super().get_worker_command(cluster, worker_name, scheduler_address)
        return cmd + (["--interface", self.interface] if self.interface else [])

    def get_stop_cmd_env(self, job_id):
        """scancel, with the site's slurm.conf."""
        cmd, env = super().get_stop_cmd_env(job_id)
        return cmd, {**env, **self._slurm_env()}

    def get_status_cmd_env(self, job_ids):
        """squeue, with the site's slurm.conf."""
        cmd, env = super().get_status_cmd_env(job_ids)
        return cmd, {**env, **self._slurm_env()}

    async def do_as_user(self, user, action, **kwargs):
        """Run dask-gateway's launcher as ``user``, with runuser instead of sudo."""
        launcher = [self.launcher_python, "-m", "dask_gateway_server.backends.jobqueue.launcher"]
        me = pwd.getpwuid(os.geteuid()).pw_name
        if me == user:
            cmd = launcher
        elif os.geteuid() == 0:
            runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
            cmd = [runuser or "/usr/sbin/runuser", "-u", user, "--", *launcher]
        else:
            raise PublicException(
                f"the gateway runs as {me!r} and cannot submit Slurm jobs as {user!r}: run the "
                "facility as root"
            )
        kwargs["action"] = action
        # The launcher hands ``env`` to sbatch/scancel: the job's variables, the site's
        # slurm.conf, and a PATH for the programs Slurm itself calls.
        kwargs["env"] = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            **kwargs.get("env", {}),
            **self._slurm_env(),
        }
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            env={"HOME": pwd.getpwnam(user).pw_dir, "PATH": "/usr/bin:/bin"},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate(json.dumps(kwargs).encode("utf8"))
        if proc.returncode != 0:
            raise Exception(
                f"dask-gateway's job launcher failed (exit {proc.returncode}) as {user}: "
                f"{stderr.decode('utf8', 'replace')[-2000:]}"
            )
        result = json.loads(stdout.decode("utf8", "replace"))
        if not result["ok"]:
            raise Exception(result["error"])
        return result["returncode"], result["stdout"], result["stderr"]
