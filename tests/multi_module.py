"""A multi-module analysis as physicists write them, for the tests of its folder on workers.

The folder holds the processor file, a local ``helpers_<tag>/`` package that reads a JSON
file beside it when it is imported, and a binning file the processor reads relative to its
own ``__file__`` in ``process()``. Each test writes it under a tag of its own, so the
package's name never meets another test's in one process (a real analysis would say
``utils``). Its output names where its modules ran from, so a test can tell the workers'
copy from the caller's folder. :func:`expected` is the same computation with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROCESSOR = """
import json
from pathlib import Path

import hist
from coffea import processor

import {package}
from {package}.corrections import SCALE, selected

HERE = Path(__file__).parent


def column(events, dotted):
    for part in dotted.split("."):
        events = getattr(events, part)
    return events


class Scaled(processor.ProcessorABC):
    def __init__(self, column="x"):
        self.column = column

    def process(self, events):
        binning = json.loads((HERE / "binning.json").read_text())
        x = column(events, self.column)
        x = x[selected(x)] * SCALE
        h = hist.Hist.new.Reg(binning["bins"], binning["lo"], binning["hi"], name="x").Double()
        h.fill(x)
        return {{
            "x": h,
            "package_at": {{str(Path({package}.__file__).parent): 1}},
            "processor_at": {{__file__: 1}},
        }}

    def postprocess(self, accumulator):
        return accumulator
"""

CORRECTIONS = """
import json
from pathlib import Path

SCALE = json.loads((Path(__file__).parent / "scale.json").read_text())["scale"]


def selected(x):
    return x > {cut}
"""

BINNING = {"bins": 12, "lo": 0.0, "hi": 120.0}
CUT = 5.0


def package_name(tag: str) -> str:
    return f"helpers_{tag}"


def write_analysis(folder: Path, tag: str, scale: float = 2.0) -> Path:
    """The analysis folder; returns the processor file."""
    package = folder / package_name(tag)
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "corrections.py").write_text(CORRECTIONS.format(cut=CUT))
    set_scale(folder, tag, scale)
    (folder / "binning.json").write_text(json.dumps(BINNING))
    proc = folder / "analysis.py"
    proc.write_text(PROCESSOR.format(package=package_name(tag)))
    return proc


def set_scale(folder: Path, tag: str, scale: float) -> None:
    (folder / package_name(tag) / "scale.json").write_text(json.dumps({"scale": scale}))


def expected(x: np.ndarray, scale: float = 2.0) -> np.ndarray:
    """The processor's histogram, computed with numpy alone."""
    x = x[x > CUT] * scale
    x = x[x < BINNING["hi"]]  # np.histogram would put hi itself into the last bin
    edges = np.linspace(BINNING["lo"], BINNING["hi"], BINNING["bins"] + 1)
    return np.histogram(x, edges)[0].astype(float)
