"""What a run leaves behind: histograms.root, result.pkl, summary.json and a PNG per histogram."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import casa
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
    """Create ``out`` (or accept an existing folder); UsageError if it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_outputs(
    out: Path, result: RunResult, analysis: str, dataset: str, plots: bool = True
) -> dict:
    """Write every output file of a run into ``out``; returns the summary."""
    import coffea

    out = prepare_out_dir(out)
    histograms = list(iter_histograms(result.output))
    not_in_root = _write_root(out / HISTOGRAMS, histograms)
    _atomic_write(out / RESULT, pickle.dumps(result.output, protocol=pickle.HIGHEST_PROTOCOL))
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
        "versions": {"casa": casa.__version__, "coffea": coffea.__version__},
        "histograms": [name for name, _ in histograms],
        "histograms_not_in_root_file": not_in_root,
        "plots": [p.name for p in pngs],
        **result.extra,
    }
    _atomic_write(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_root(path: Path, histograms: list[tuple[str, Any]]) -> list[str]:
    """Write each histogram as a ROOT TH1/TH2/TH3; return those ROOT cannot hold."""
    import uproot

    skipped = []
    tmp = path.with_name(f".{path.name}.tmp")
    with uproot.recreate(tmp) as f:
        for name, h in histograms:
            try:
                f[name] = h
            except Exception:  # category axes and other shapes ROOT histograms cannot hold
                skipped.append(name)
    os.replace(tmp, path)
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
