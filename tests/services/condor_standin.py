"""A stand-in for HTCondor's ``condor_submit`` and ``condor_rm`` on one machine, for tests.

HTCondor cannot be installed here. This plays the two commands dask-jobqueue calls, and
HTCondor's starter, as a single-slot pool would: ``submit FILE`` reads the submit
description, copies ``transfer_input_files`` into a fresh scratch folder, sets the
``environment`` and ``_CONDOR_SCRATCH_DIR``, runs the job's ``Arguments`` with its
``Executable`` (``/bin/sh -c``) in the background and prints HTCondor's answer;
``rm ID`` stops that job. It reads the description with the tests' parser (tests/submit_files.py), so what it
runs is exactly what the submit description says. Everything it does is logged in
``$CONDOR_STANDIN_DIR/log.jsonl``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # run as a program: tests/ for its helper
from submit_files import submit_directives, submit_environment, worker_command  # noqa: E402


def _state() -> Path:
    return Path(os.environ["CONDOR_STANDIN_DIR"])


def _log(**event) -> None:
    with open(_state() / "log.jsonl", "a") as f:
        f.write(json.dumps(event) + "\n")


def submit(args: list[str]) -> int:
    script = Path(args[-1]).read_text()
    directives = submit_directives(script)
    state = _state()
    cluster = len(list(state.glob("job-*"))) + 1
    scratch = state / f"job-{cluster}"
    scratch.mkdir()
    transferred = [p for p in directives.get("transfer_input_files", "").split(",") if p]
    for name in transferred:
        target = scratch / Path(name).name
        target.write_bytes(Path(name).read_bytes())
        target.chmod(Path(name).stat().st_mode & 0o777)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BEARER_", "DASK_", "CONDOR_STANDIN"))}  # fmt: skip
    env.update(submit_environment(script), _CONDOR_SCRATCH_DIR=str(scratch))
    with open(scratch / "job.log", "wb") as out:
        proc = subprocess.Popen(
            [directives.get("Executable", "/bin/sh"), "-c", worker_command(script)],
            cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (scratch / "pid").write_text(str(proc.pid))
    _log(action="submit", cluster=cluster, args=args[:-1], pid=proc.pid,
         transferred=[Path(p).name for p in transferred])  # fmt: skip
    print("Submitting job(s).")
    print(f"1 job(s) submitted to cluster {cluster}.")
    return 0


def remove(args: list[str]) -> int:
    job = args[-1]
    cluster = job.split(".")[0]
    pid_file = _state() / f"job-{cluster}" / "pid"
    if not pid_file.exists():
        print(f"Couldn't find/remove all jobs matching {job}", file=sys.stderr)
        return 1
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _log(action="rm", cluster=int(cluster), pid=pid)
    print(f"Job {job} marked for removal")
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"submit": submit, "rm": remove}[command](rest))
