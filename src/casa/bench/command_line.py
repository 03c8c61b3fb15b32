"""How soon casa's command line answers: whole commands, as a user's shell runs them.

A typo should be reported at once, before anything heavy is imported (the command-line
modules import their libraries where they are used). ``casa bench`` reports the median of
:data:`REPEAT` runs of each command beside its target, and, on its facility once the
cluster is warm, a whole ``casa run`` as a user types it (:func:`warm_run_figures`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from casa.errors import ServiceError

#: Runs of each command; the median is reported.
REPEAT = 5
#: The commands timed: their arguments to ``casa``, the target in seconds (None: none set).
COMMANDS: dict[str, tuple[list[str], float | None]] = {
    "version_seconds": (["--version"], None),
    "usage_error_seconds": (["run", "--no-such-option"], 0.5),
}


def command_line_figures(repeat: int = REPEAT) -> dict[str, dict]:
    """``{figure: {"seconds": median, "target": seconds or None, "runs": [...]}}``."""
    out = {}
    for name, (args, target) in COMMANDS.items():
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "casa", *args], capture_output=True)
            runs.append(time.perf_counter() - started)
        out[name] = {"seconds": statistics.median(runs), "target": target, "runs": runs,
                     "command": "casa " + " ".join(args)}  # fmt: skip
    return out


#: ``casa run`` of 1M events on a warm gateway cluster: the target for its whole command.
WARM_RUN_TARGET_SECONDS = 2.0
WARM_RUN_TARGET_EVENTS = 1_000_000
#: Something on screen within this long (what the run is doing).
FIRST_OUTPUT_TARGET_SECONDS = 0.5


def warm_run_figures(
    home: Path, dataset: str, events: int, query: str, workers: int, out: Path, repeat: int
) -> dict[str, dict]:
    """``casa run QUERY --dataset DATASET --cluster gateway`` as a user types it, on the
    facility in ``home`` whose gateway cluster of this environment is warm: the median of
    ``repeat`` whole commands (interpreter start-up to exit), and how soon the first line
    reached the screen (stderr, where casa says what it is doing)."""
    command = ["run", query, "--dataset", dataset, "--cluster", "gateway", "--workers",
               str(workers), "--no-plots", "--out", str(out)]  # fmt: skip
    totals, firsts, reported, reused = [], [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "casa", "--home", str(home), *command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        first: list[float] = []
        said: list[bytes] = []
        watcher = threading.Thread(
            target=_read_lines, args=(process.stderr, started, first, said), daemon=True
        )
        watcher.start()
        process.stdout.read()
        code = process.wait()
        totals.append(time.perf_counter() - started)
        watcher.join(timeout=5)
        if code != 0:
            raise ServiceError(
                f"the bench's 'casa {' '.join(command)}' failed (exit {code}): "
                f"{b''.join(said).decode(errors='replace')[-1500:]}"
            )
        firsts.append(first[0] if first else totals[-1])
        reused.append(b"connecting to your cluster" in b"".join(said))
        reported.append(json.loads((out / "summary.json").read_text())["wall_seconds"])
    shown = "casa " + " ".join(command[:-2] + ["--out", "DIR"])
    scale = events / WARM_RUN_TARGET_EVENTS
    return {
        "warm_run_seconds": {
            "seconds": statistics.median(totals), "runs": totals, "events": events,
            "command": f"{shown}  ({events:,} events, warm cluster)",
            # The target is for 1M events: scaled to the bench's, never below the 1M one's
            # share of start-up (half of it).
            "target": WARM_RUN_TARGET_SECONDS * max(scale, 0.5),
            "reported_seconds": statistics.median(reported),
            "reused_the_cluster": all(reused),
        },
        "first_output_seconds": {
            "seconds": statistics.median(firsts), "runs": firsts,
            "command": f"{shown}  (until its first line on screen)",
            "target": FIRST_OUTPUT_TARGET_SECONDS,
        },
    }  # fmt: skip


def _read_lines(stream, started: float, first: list[float], lines: list[bytes]) -> None:
    """Every line of ``stream`` into ``lines``; the seconds since ``started`` at the first."""
    for line in iter(stream.readline, b""):
        if not first:
            first.append(time.perf_counter() - started)
        lines.append(line)
