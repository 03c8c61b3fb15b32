"""Small things a user sees: plots whose labels fit, lines not cut when piped, durations
in words."""

from __future__ import annotations

import os
import subprocess
import sys

import hist
import numpy as np

from casa.analysis import outputs
from casa.cli.facility import duration


def test_every_label_of_a_written_plot_is_inside_the_picture(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figures to measure them
    one = hist.Hist.new.Reg(50, 0, 200, name="mass", label="dimuon mass [GeV]").Double()
    one.fill(np.random.default_rng(1).normal(91, 5, 1000))
    two = hist.Hist.new.Reg(20, 0, 5, name="a").Reg(20, 0, 5, name="b").Double()
    two.fill(a=[1, 2], b=[3, 4])
    written = outputs._write_plots(tmp_path, [("mass", one), ("ab", two)], "dimuon")
    assert [p.name for p in written] == ["mass.png", "ab.png"]
    for fig in kept:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        frame = fig.bbox
        for ax in fig.axes:
            for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
                if not text.get_text():
                    continue
                box = text.get_window_extent(renderer)
                assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text.get_text()
                assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text.get_text()
    assert kept, "no figure was made"


def test_piped_output_is_not_cut_at_80_columns(tmp_path):
    """A cluster name or a URL must be copyable from ``casa ... | less`` or a log."""
    path = tmp_path / ("a-folder-with-a-long-name-" * 4) / "file.root"
    path.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["CASA_HOME"] = str(tmp_path / "home")
    code = (
        "from casa.cli.console import console\n"
        "from rich.table import Table\n"
        f"t = Table('url', 'events'); t.add_row({str(path)!r}, '10'); console.print(t)\n"
        f"console.print('error: ' + {str(path)!r} * 2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    assert any(str(path) in line for line in done.stdout.splitlines()), done.stdout
    assert any(str(path) * 2 in line for line in done.stdout.splitlines()), done.stdout


def test_durations_are_in_words():
    assert duration(45.2) == "45 s"
    assert duration(1291) == "21 min"
    assert duration(3 * 3600 + 5 * 60 + 9) == "3 h 05 min"
    assert duration(2 * 86400 + 4 * 3600 + 1) == "2 d 4 h"


def test_a_usage_error_needs_none_of_the_heavy_libraries():
    """argparse reports a typo before any command runs: what the command-line modules import
    at their top is all a usage error waits for (casa bench times it, against 0.5 s)."""
    code = (
        "import sys, casa.cli\n"
        "heavy = ('sqlalchemy', 'coffea', 'uproot', 'awkward', 'dask', 'distributed', "
        "'numpy', 'cryptography', 'jwt', 'casa.facility', 'casa.data.catalog')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.strip() == "[]", done.stdout
    typo = subprocess.run([sys.executable, "-m", "casa", "run", "--no-such-option"],
                          capture_output=True, text=True)  # fmt: skip
    assert typo.returncode == 2 and "casa run: error:" in typo.stderr, typo.stderr


def _every_argument(parser, path=("casa",)):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                yield path + (name,), None, helps.get(name)
                yield from _every_argument(sub, path + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action, action.help


def test_every_help_page_describes_each_argument_and_names_its_default():
    """``--help`` of every command: each command, argument and option says what it is, and
    each option with a default value names it (as the pages print it)."""
    import argparse

    from casa.cli import build_parser

    missing, no_default = [], []
    for path, action, text in _every_argument(build_parser()):
        name = " ".join(path) + ("" if action is None else f" {action.dest}")
        if not text:
            missing.append(name)
        flag = action is not None and action.option_strings
        valued = flag and not isinstance(action, (argparse._StoreTrueAction,
                                                  argparse._StoreFalseAction))  # fmt: skip
        if valued and action.default not in (None, [], argparse.SUPPRESS):
            if "default" not in (text or ""):
                no_default.append(f"{name} (default {action.default!r})")
    assert not missing, f"arguments without a description: {missing}"
    assert not no_default, f"options whose help does not name their default: {no_default}"
