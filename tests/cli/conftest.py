"""Helpers for running the real ``casa`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from casa.generate.generator import generate_dataset


@dataclass
class Completed:
    code: int
    out: str
    err: str


@pytest.fixture
def casa(tmp_path):
    """Run ``casa ARGS...`` with a private facility state directory."""
    home = tmp_path / "casa-home"
    env = {**os.environ, "CASA_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}

    def run(*args: str, check: bool = False) -> Completed:
        p = subprocess.run(
            [sys.executable, "-m", "casa", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        result = Completed(p.returncode, p.stdout, p.stderr)
        if check:
            assert p.returncode == 0, f"casa {' '.join(map(str, args))} failed:\n{p.stderr}"
        return result

    run.home = home
    return run


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory):
    """Three generated files of 8,000 events each."""
    d = tmp_path_factory.mktemp("cli-data")
    generate_dataset(d, 24_000, 3, seed=21, workers=1)
    return d
