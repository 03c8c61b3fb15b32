"""How soon casa's command line answers: whole commands, as a user's shell runs them.

A typo should be reported at once, before anything heavy is imported (the command-line
modules import their libraries where they are used). ``casa bench`` reports the median of
:data:`REPEAT` runs of each command beside its target.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

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
