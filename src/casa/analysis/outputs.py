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

import numpy as np

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


#: hist storages that keep one count per bin, whose sum is the number of entries.
COUNTING_STORAGES = ("Int64", "AtomicInt64", "Double", "Unlimited")
#: Storages uproot cannot write as they are (no 64-bit integer TArray): written as doubles.
INTEGER_STORAGES = ("Int64", "AtomicInt64")


def histogram_stats(h: Any) -> dict[str, Any]:
    """What summary.json and the terminal say of one histogram: its storage, entries
    (flow bins included), sum of weights, and for one axis the mean and the peak bin.

    Counting storages (Int64, Double, ...) keep one number per bin: its sum is the number
    of entries (the sum of weights, had a Double histogram been filled with weights), and
    ``sum_of_weights`` is None. A Weight storage keeps sums of weights and of their squares
    but no count of fills, so its ``entries`` are the effective entries (sum w)^2 / sum w^2,
    ROOT's ``GetEffectiveEntries`` (the count itself when all weights are equal), and
    ``entries_kind`` says ``"effective"``. Mean storage counts its fills; WeightedMean keeps
    weights as Weight does. ``peak_bin`` is the fullest bin of a one-axis histogram:
    ``[low, high]`` on a continuous axis, the value itself on an integer or category axis
    (which has no mean).
    """
    storage = h.storage_type.__name__
    view = h.view(flow=True)
    sum_w = sum_w2 = None
    if storage == "Weight":
        sum_w, sum_w2 = float(view.value.sum()), float(view.variance.sum())
        in_range = h.view().value
    elif storage == "WeightedMean":
        sum_w = float(view.sum_of_weights.sum())
        sum_w2 = float(view.sum_of_weights_squared.sum())
        in_range = h.view().sum_of_weights
    elif storage == "Mean":
        in_range = h.view().count
        entries: float = int(view.count.sum())
    else:
        in_range = h.values()
        total = h.values(flow=True).sum()
        entries = int(total) if storage in INTEGER_STORAGES else float(total)
    if sum_w is not None:
        entries = sum_w**2 / sum_w2 if sum_w2 else 0.0
    stats: dict[str, Any] = {
        "storage": storage,
        "axes": h.ndim,
        "entries": entries,
        "entries_kind": "counted" if sum_w is None else "effective",
        "sum_of_weights": sum_w,
        "sum_of_weights_squared": sum_w2,
        "mean": None,
        "peak_bin": None,
    }
    in_range = np.asarray(in_range, dtype=float)
    if h.ndim == 1 and in_range.sum() > 0:
        axis = h.axes[0]
        i = int(np.argmax(in_range))
        if axis.traits.continuous:  # Regular, Variable: the bins' centres
            stats["mean"] = float(np.average(axis.centers, weights=in_range))
            stats["peak_bin"] = [float(axis.edges[i]), float(axis.edges[i + 1])]
        elif not axis.traits.ordered:  # categories: no mean
            value = axis.value(i)
            stats["peak_bin"] = value.item() if hasattr(value, "item") else value
        else:  # Integer, Boolean: the integers themselves
            stats["mean"] = float(np.average(axis.edges[:-1], weights=in_range))
            stats["peak_bin"] = int(axis.edges[i])
    return stats


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
    stats = {name: histogram_stats(h) for name, h in histograms}
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
        "histogram_stats": stats,
        "histograms_not_in_root_file": not_in_root,
        "plots": [p.name for p in pngs],
        **result.extra,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_root(path: Path, histograms: list[tuple[str, Any]]) -> dict[str, str]:
    """Write each histogram as a ROOT TH1/TH2/TH3 (TProfile for one-axis Mean storages);
    return those that cannot be written, each with the reason."""
    import uproot

    skipped = {}
    with uproot.recreate(path) as f:
        for name, h in histograms:
            reason = _not_writable_because(h)
            if reason is None:
                try:
                    f[name] = _as_writable(h)
                except Exception as e:  # shapes ROOT histograms cannot hold
                    reason = f"uproot cannot write it as a ROOT histogram ({e})"
            if reason is not None:
                skipped[name] = reason
    return skipped


def _not_writable_because(h: Any) -> str | None:
    """Why ``h`` cannot be a ROOT histogram, known before trying; None if it can be tried."""
    if not 1 <= h.ndim <= 3:
        return f"ROOT histograms have 1 to 3 axes and it has {h.ndim}"
    if h.kind == "MEAN" and h.ndim > 1:
        return (
            f"it is a profile ({h.storage_type.__name__} storage) of {h.ndim} axes, and uproot "
            "writes profiles of one axis only (TProfile)"
        )
    return None


def _as_writable(h: Any) -> Any:
    """``h``, or for an integer storage a copy with double storage (ROOT's TH*D): uproot has
    no 64-bit integer arrays to write, and a double holds every count below 2**53 exactly."""
    import hist

    if h.storage_type.__name__ not in INTEGER_STORAGES:
        return h
    copy = hist.Hist(*h.axes, storage=hist.storage.Double(), name=h.name, label=h.label)
    copy.view(flow=True)[...] = h.view(flow=True)
    return copy


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
            # Laid out to fit: CMS style's large labels would be cut at the figure's edges.
            fig, ax = plt.subplots(figsize=(9, 7), layout="constrained")
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
