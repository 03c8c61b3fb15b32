"""A Slurm site on this machine: a head and worker hosts made of network namespaces.

``head`` holds a bridge (``br0``) and runs slurmctld and the site's clients; each worker
host (``n1``, ``n2``) is a network namespace joined to the bridge by a veth (``eth0`` in
the host) with its own UTS namespace, so ``socket.gethostname()`` there is its name, and
runs slurmd. All hosts share this machine's filesystem, so one scratch folder holds the
configuration, spools, logs and anything the workers must read. One munged, in the root
namespace, serves every namespace through its unix socket. Needs root and Debian's
``slurm-wlm`` and ``munge``. Everything is torn down by :meth:`NetnsSite.close`, even after
a partial start.

With ``facility=True`` a casa facility is laid out across the site by ``[site]`` in one
``casa.toml``: ``casa up`` on ``head`` starts the issuer, the origin, the gateway (whose
clusters are Slurm jobs) and the hub; ``casa up`` on a cache host ``c1`` beside the workers
starts the XCache the workers read through. Each host has its own state directory, as
separate machines would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

SLURM_PACKAGES = ("slurmctld", "slurmd", "sbatch", "sinfo", "munged", "munge")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
SUBNET = "10.87.0"
HEAD_IP = f"{SUBNET}.1"
CACHE_HOST = "c1"
CACHE_IP = f"{SUBNET}.21"
#: The facility's ports (each host is its own network namespace: casa's defaults are free).
CACHE_PORTS = {"issuer": 21096, "origin": 21094, "cache": 21095, "gateway": 21080}
START_TIMEOUT = 60.0


def site_config(slurm_conf: Path, scheduler_partition: str = "") -> str:
    """The site's casa.toml, the same on every host."""
    return (
        f'[facility]\nhost = "{HEAD_IP}"\n'
        f'[site]\ncache = "{CACHE_IP}"\n'
        '[gateway]\nbackend = "slurm"\n'
        f'[slurm]\nconf = "{slurm_conf}"\ninterface = "eth0"\npartition = "casa"\n'
        f'scheduler_partition = "{scheduler_partition}"\n'
    )


def missing_tools() -> list[str]:
    """The programs this site needs that are not installed."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [t for t in SLURM_PACKAGES + ("ip", "nsenter", "unshare")
            if shutil.which(t, path=path) is None]  # fmt: skip


def _run(cmd: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kwargs)


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    cred = _run(["munge", "-n"], check=False)
    return (
        cred.returncode == 0 and _run(["unmunge"], check=False, input=cred.stdout).returncode == 0
    )


class NetnsSite:
    """A head namespace with slurmctld and worker-host namespaces with slurmd."""

    def __init__(
        self,
        nodes: Sequence[str] = ("n1", "n2"),
        cpus: int = 2,
        facility: bool = False,
        scheduler_nodes: Sequence[str] = (),
    ):
        self.tag = uuid.uuid4().hex[:6]
        self.worker_nodes = list(nodes)
        self.scheduler_nodes = list(scheduler_nodes)  # partition 'sched'
        self.nodes = self.worker_nodes + self.scheduler_nodes
        self.facility = facility

        self.cpus = cpus
        self.scratch = Path(tempfile.mkdtemp(prefix="casa-slurm-site-"))
        os.chmod(self.scratch, 0o755)
        self.conf = self.scratch / "slurm.conf"
        self.head = f"casa{self.tag}-head"
        self.ns = {n: f"casa{self.tag}-{n}" for n in self.nodes}
        self.ips = {n: f"{SUBNET}.{11 + i}" for i, n in enumerate(self.nodes)}
        if facility:
            self.ns[CACHE_HOST] = f"casa{self.tag}-{CACHE_HOST}"
            self.ips[CACHE_HOST] = CACHE_IP
        self.head_home = self.scratch / "head-facility"
        self.cache_home = self.scratch / "c1-facility"
        self._created: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._munged: subprocess.Popen | None = None

    # -- building ---------------------------------------------------------------------------

    def start(self) -> NetnsSite:
        """Build the network, start munge, slurmctld and every slurmd; wait until all idle."""
        try:
            self._network()
            self._munge()
            self._write_conf()
            self._slurmctld()
            for node in self.nodes:
                self._slurmd(node)
            self.wait_idle()
            if self.facility:
                self._facility()
        except BaseException:
            self.close()
            raise
        return self

    def _netns_add(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _network(self) -> None:
        self._netns_add(self.head)
        _run(["ip", "-n", self.head, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.head, "addr", "add", f"{HEAD_IP}/24", "dev", "br0"])
        _run(["ip", "-n", self.head, "link", "set", "br0", "up"])
        for node, ns in self.ns.items():
            self._netns_add(ns)
            port = f"v{node}"
            _run(["ip", "-n", self.head, "link", "add", port, "type", "veth",
                  "peer", "name", "eth0", "netns", ns])  # fmt: skip
            _run(["ip", "-n", self.head, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.ips[node]}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _munge(self) -> None:
        if _munge_works():
            return
        run_dir = MUNGE_SOCKET.parent
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        self._munged = subprocess.Popen(
            ["/usr/sbin/munged", "-F"], user="munge", group="munge",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not _munge_works():
            if self._munged.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("munged did not start")
            time.sleep(0.2)

    def _facility(self) -> None:
        """``casa up`` on head (issuer, origin, gateway, hub), then on c1 (its cache)."""
        text = site_config(self.conf, "sched" if self.scheduler_nodes else "")
        for home in (self.head_home, self.cache_home):
            home.mkdir(mode=0o711)
            os.chmod(home, 0o711)  # XRootD runs as 'xrootd' under root
            (home / "casa.toml").write_text(text)
        self.up_output = {"head": self.casa("head", "up"), CACHE_HOST: self.casa(CACHE_HOST, "up")}

    def host_namespace(self, host: str) -> str:
        """The network namespace of ``head``, ``c1`` or a node."""
        return self.head if host == "head" else self.ns[host]

    def run_on(self, host: str, cmd: Sequence[str], timeout: float = 180, **env: str) -> str:
        """Run ``cmd`` on ``host`` (``head`` or ``c1``) with its own ``$CASA_HOME``; its stdout."""
        home = self.head_home if host == "head" else self.cache_home
        full = {**self.env(), "CASA_HOME": str(home), **env}
        for k in ("BEARER_TOKEN", "BEARER_TOKEN_FILE"):
            if k not in env:
                full.pop(k, None)
        done = _run(["ip", "netns", "exec", self.host_namespace(host), *cmd], check=False,
                    env=full, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} failed on {host}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def casa(self, host: str, *args: str, timeout: float = 180, **env: str) -> str:
        """``casa ARGS`` run on ``host`` against its facility; its stdout."""
        return self.run_on(host, [sys.executable, "-m", "casa", *args], timeout=timeout, **env)

    def _write_conf(self) -> None:
        s = self.scratch
        for d in ["state", "log", "run", *(f"spool/{n}" for n in self.nodes)]:
            (s / d).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=casa",
            f"SlurmctldHost={socket.gethostname()}({HEAD_IP})",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            f"StateSaveLocation={s}/state",
            f"SlurmdSpoolDir={s}/spool/%n",
            f"SlurmctldPidFile={s}/run/slurmctld.pid",
            f"SlurmdPidFile={s}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={s}/log/slurmctld.log",
            f"SlurmdLogFile={s}/log/slurmd-%n.log",
        ]
        lines += [f"NodeName={n} NodeAddr={self.ips[n]} CPUs={self.cpus} RealMemory=3000"
                  for n in self.nodes]  # fmt: skip
        lines.append(f"PartitionName=casa Nodes={','.join(self.worker_nodes)} Default=YES "
                     "MaxTime=INFINITE State=UP")  # fmt: skip
        if self.scheduler_nodes:
            lines.append(f"PartitionName=sched Nodes={','.join(self.scheduler_nodes)} "
                         "MaxTime=INFINITE State=UP")  # fmt: skip
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen:
        with open(self.scratch / "log" / log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        self._procs.append(proc)
        return proc

    def _slurmctld(self) -> None:
        self._spawn(["ip", "netns", "exec", self.head, "slurmctld", "-D", "-i", "-f",
                     str(self.conf)], "slurmctld.out")  # fmt: skip

    def _slurmd(self, node: str) -> None:
        # 'ip netns exec' remounts /sys, where slurmd 22.05 cannot start its cgroup plugin.
        self._spawn(["nsenter", f"--net=/run/netns/{self.ns[node]}", "unshare", "--uts", "sh",
                     "-c", f'hostname {node}; exec slurmd -D -f "{self.conf}" -N {node}'],
                    f"slurmd-{node}.out")  # fmt: skip

    # -- using ------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment of the site's clients: ``SLURM_CONF`` names this site's config."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def in_head(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run in the head namespace."""
        return ["ip", "netns", "exec", self.head, *cmd]

    def node_states(self) -> dict[str, str]:
        """Each node's state as ``sinfo`` shows it (``idle``, ``alloc``, ``down*``...)."""
        out = _run(self.in_head(["sinfo", "-h", "-N", "-o", "%N %t"]), check=False,
                   env=self.env())  # fmt: skip
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def wait_idle(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``sinfo`` shows every node idle."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if all(states.get(n) == "idle" for n in self.nodes):
                return
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited: see {self.scratch}/log")
            time.sleep(0.5)
        raise RuntimeError(f"nodes not idle after {timeout} s: {states}; see {self.scratch}/log")

    def pids(self, namespace: str) -> list[int]:
        """The processes in a network namespace (none once it is gone)."""
        out = _run(["ip", "netns", "pids", namespace], check=False)
        return [int(p) for p in out.stdout.split()]

    def stop_host(self, node: str) -> list[int]:
        """A host crash: kill every process in ``node``'s namespace, then take its link down."""
        killed = self._kill_all(self.ns[node])
        _run(["ip", "-n", self.head, "link", "set", f"v{node}", "down"], check=False)
        return killed

    def restart_host(self, node: str) -> None:
        """Bring a stopped host back: its link up, its slurmd started; wait until it is idle."""
        if self.pids(self.ns[node]):
            return
        _run(["ip", "-n", self.head, "link", "set", f"v{node}", "up"])
        self._procs = [p for p in self._procs if p.poll() is None]  # the stopped slurmd
        self._slurmd(node)
        self.wait_idle()

    def processes(self, host: str, needle: str) -> list[tuple[list[str], dict[str, str]]]:
        """Command lines and environments of the processes on ``host`` whose command has ``needle``."""
        found = []
        for pid in self.pids(self.host_namespace(host)):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            argv = [a.decode(errors="replace") for a in cmd if a]
            if any(needle in a for a in argv):
                env = dict(e.decode(errors="replace").partition("=")[::2] for e in raw if e)
                found.append((argv, env))
        return found

    def _kill_all(self, namespace: str) -> list[int]:
        killed: list[int] = []
        for _ in range(20):
            pids = [p for p in self.pids(namespace) if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return killed

    # -- tearing down -----------------------------------------------------------------------

    def close(self) -> None:
        """Kill every daemon and job, delete the namespaces and the scratch folder."""
        if self.facility:
            for host in (CACHE_HOST, "head"):
                try:
                    self.casa(host, "down", timeout=60)
                except (RuntimeError, subprocess.TimeoutExpired, KeyError):
                    pass
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for name in reversed(self._created):
            self._kill_all(name)
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self._created):
            _run(["ip", "netns", "del", name], check=False)
        self._created.clear()
        if self._munged is not None:
            self._munged.terminate()
            try:
                self._munged.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._munged.kill()
            self._munged = None
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> NetnsSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
