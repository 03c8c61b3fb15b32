"""A multi-module analysis on a gateway cluster, reading the facility's data through the
cache: its folder reaches the workers (the gateway's workers run elsewhere, with a
``sys.path`` of their own), a changed folder reaches them at the next run, and an error in
one of its modules names the user's file. Checked against uproot + numpy."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import uproot

from casa.generate.generator import generate_dataset
from multi_module import expected, package_name, set_scale, write_analysis

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)


@pytest.fixture(scope="module")
def stored(facility, tmp_path_factory):
    """A generated dataset stored as 'folder-sim', its MET read by uproot, a token file."""
    d = tmp_path_factory.mktemp("folder-sim")
    generate_dataset(d, 8_000, 2, seed=41, workers=1)
    facility.casa("datasets", "add", "folder-sim", d, "--store", check=True)
    met = np.concatenate(
        [uproot.open(p)["Events"]["MET_pt"].array(library="np") for p in sorted(d.glob("*.root"))]
    )
    token = d / "token"
    token.write_text(facility.token())
    return met, {"BEARER_TOKEN": "", "BEARER_TOKEN_FILE": str(token)}


def test_the_folder_reaches_gateway_workers_and_follows_its_changes(facility, stored, tmp_path):
    met, env = stored
    folder = tmp_path / "ttbar analysis"
    proc = write_analysis(folder, "gateway")
    run = ("run", f"{proc}:Scaled", "--arg", "column=MET.pt", "--dataset", "folder-sim",
           "--cluster", "gateway", "--workers", "1", "--no-plots")  # fmt: skip

    def ran_at(out: Path) -> tuple[dict, Path]:
        result = pickle.loads((out / "result.pkl").read_bytes())
        (package_at,) = result["package_at"]
        return result, Path(package_at).parent

    try:
        facility.casa(*run, "--out", tmp_path / "one", env=env, check=True)
        result, first = ran_at(tmp_path / "one")
        assert np.array_equal(result["x"].values(), expected(met))
        assert first != folder and first.name == folder.name, first
        assert first.parent.name.startswith("casa-analysis-")
        (processor_at,) = result["processor_at"]
        assert processor_at == str(first / "analysis.py")

        # The user changes a file the package reads when imported; the cluster is reused.
        set_scale(folder, "gateway", 0.5)
        facility.casa(*run, "--out", tmp_path / "two", env=env, check=True)
        result, second = ran_at(tmp_path / "two")
        assert np.array_equal(result["x"].values(), expected(met, scale=0.5))
        assert second != first and not first.exists(), "the workers kept the old version"

        # A failing helper: the traceback names the user's file, not the workers' copy.
        corrections = folder / package_name("gateway") / "corrections.py"
        corrections.write_text(
            corrections.read_text().replace("return x >", "return x.no_such_field >")
        )
        failed = facility.casa(*run, "--out", tmp_path / "three", env=env)
        assert failed.returncode == 5, failed.stderr
        assert f'File "{corrections}"' in failed.stderr, failed.stderr
        assert "casa-analysis-" not in failed.stderr
        assert not (tmp_path / "three").exists()
    finally:
        facility.casa("cluster", "stop", "--all")
