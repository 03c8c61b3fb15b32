"""What a run leaves behind: histograms.root, result.pkl, summary.json and a PNG per histogram."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from casa.analysis.runner import RunResult
from casa.errors import UsageError

HISTOGRAMS = "histograms.root"
RESULT = "result.pkl"
SUMMARY = "summary.json"


def iter_histograms(output: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``hist.Hist`` in a (possibly nested) accumulator, with a ``/``-joined name."""
    import hist

    if isinstance(output, hist.Hist):
        yield prefix or "histogram", output
    elif isinstance(output, Mapping):
        for key, value in output.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            yield from iter_histograms(value, name)


def prepare_out_dir(out: Path) -> Path:
    """Check that a run's outputs can go into ``out`` (an existing folder, or one that can be
    made); UsageError otherwise. Nothing is created: a run that fails leaves no trace."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    nearest = out
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UsageError(f"--out {out} cannot be made: {nearest} is not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} cannot be written: {nearest} is not writable for you")
    return out


def write_outputs(
    out: Path, result: RunResult, analysis: str, dataset: str, plots: bool = True
) -> dict:
    """Write every output file of a run into ``out``; returns the summary.

    The files are written into a staging folder first and then moved into ``out``
    (summary.json last), so ``out`` never holds a half-written file or a partial set.
    """
    out = prepare_out_dir(out)
    if out.exists():
        staging = Path(tempfile.mkdtemp(prefix=".casa-staging-", dir=out))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        summary = _write_all(staging, result, analysis, dataset, plots)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename a new ``out`` into place, or move each file into an existing one."""
    if not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp made it 0700; a plain mkdir would not
        staging.rename(out)
        return
    for name in sorted((p.name for p in staging.iterdir()), key=lambda n: (n == SUMMARY, n)):
        os.replace(staging / name, out / name)  # summary.json last: it says the set is whole


def _write_all(out: Path, result: RunResult, analysis: str, dataset: str, plots: bool) -> dict:
    import coffea

    histograms = list(iter_histograms(result.output))
    not_in_root = _write_root(out / HISTOGRAMS, histograms)
    (out / RESULT).write_bytes(pickle.dumps(result.output, protocol=pickle.HIGHEST_PROTOCOL))
    pngs = _write_plots(out, histograms, analysis) if plots else []
    summary = {
        "analysis": analysis,
        "dataset": dataset,
        "events_per_file": result.events_per_file,
        "events": result.events,
        "chunks": result.chunks,
        "chunks_counted_twice": [list(c) for c in result.chunks_repeated],
        "chunks_skipped": [
            {"file": f, "entry_start": a, "entry_stop": b} for f, a, b in result.skipped
        ],
        "wall_seconds": round(result.wall_seconds, 4),
        "events_per_second": round(result.events_per_second, 1),
        "bytes_read": result.bytes_read,
        "executor": result.executor,
        "workers": result.workers,
        "dashboard": result.dashboard,
        "versions": {"casa": version("casa"), "coffea": coffea.__version__},
        "histograms": [name for name, _ in histograms],
        "histograms_not_in_root_file": not_in_root,
        "plots": [p.name for p in pngs],
        **result.extra,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_root(path: Path, histograms: list[tuple[str, Any]]) -> list[str]:
    """Write each histogram as a ROOT TH1/TH2/TH3; return those ROOT cannot hold."""
    import uproot

    skipped = []
    with uproot.recreate(path) as f:
        for name, h in histograms:
            try:
                f[name] = h
            except Exception:  # category axes and other shapes ROOT histograms cannot hold
                skipped.append(name)
    return skipped


def _write_plots(out: Path, histograms: list[tuple[str, Any]], analysis: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    written = []
    with plt.style.context(mplhep.style.CMS):
        for name, h in histograms:
            if h.ndim not in (1, 2):
                continue
            fig, ax = plt.subplots(figsize=(9, 7))
            if h.ndim == 1:
                mplhep.histplot(h, ax=ax, histtype="fill", alpha=0.6, edgecolor="black")
                ax.set_ylabel("Events")
            else:
                mplhep.hist2dplot(h, ax=ax)
            ax.set_title(f"casa {analysis}: {name}", fontsize=16)
            png = out / f"{name.replace('/', '_')}.png"
            fig.savefig(png, dpi=100)
            plt.close(fig)
            written.append(png)
    return written
