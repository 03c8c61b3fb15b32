"""A newcomer's path, step by step as the README gives it: ``make demo`` (``casa demo``: the
facility up, the demo dataset generated and stored, two analyses on the gateway), then the
hub: the admin adds a user, who logs in and runs ``examples/dimuon.ipynb`` cell by cell.

``casa demo`` stores the dataset after the hub started; a lab that was already running
then sees it too (tests/services/test_hub.py::test_datasets_added_while_the_lab_runs_reach_it_at_once).
"""

from __future__ import annotations

import json
import pickle
import pwd
from pathlib import Path

from accounts import needs_xrootd_and_root, remove_unix_account
from casa.services.hub.config import hub_api_token
from hub_client import HubAdmin, HubClient, Kernel

pytestmark = needs_xrootd_and_root("create the user's Unix account")

USER, PASSWORD = "tnnewcomer", "newcomer-password"
EVENTS = 40_000


def test_make_demo_then_the_example_notebook_on_the_demo_dataset(tmp_path):
    from conftest import new_facility_home, stop_everything

    f = new_facility_home()
    remove_unix_account(USER)
    try:
        out = tmp_path / "demo-output"
        demo = f.casa("demo", "--events", EVENTS, "--files", 2, "--out", out)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        summary = json.loads((out / "dimuon" / "summary.json").read_text())
        assert summary["events"] == EVENTS and summary["dataset"] == "demo"

        added = f.casa("user", "add", USER, "--password-stdin", input_text=PASSWORD)
        assert added.returncode == 0, added.stderr
        base = f"http://127.0.0.1:{f.ports['hub']}"
        assert HubClient(base).login(USER, PASSWORD).status_code == 200
        admin = HubAdmin(base, hub_api_token(f.ctx()))
        admin.spawn(USER)

        notebook = Path(pwd.getpwnam(USER).pw_dir) / "examples" / "dimuon.ipynb"
        cells = [
            "".join(c["source"])
            for c in json.loads(notebook.read_text())["cells"]
            if c["cell_type"] == "code"
        ]
        kernel = Kernel(base, USER, admin.user_token(USER))
        try:
            printed = ""
            for cell in cells:
                done = kernel.execute(cell, timeout=300)
                assert done["error"] is None, (cell, done["error"])
                printed += done["stdout"]
        finally:
            kernel.close()
        mass = pickle.loads((out / "dimuon" / "result.pkl").read_bytes())["mass"]
        assert mass.values().sum() > 0
        assert f"{mass.values().sum():.0f} dimuon events" in printed, printed
        assert "the Z peak is at" in printed, printed
    finally:
        f.casa("down")
        stop_everything(f.home)
        remove_unix_account(USER)


def readme_session() -> str:
    """The README's example session, the shell block under '### An example session'."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    after = readme.split("### An example session", 1)[1]
    return after.split("```sh\n", 1)[1].split("\n```\n", 1)[0] + "\n"


def test_the_readme_session_runs_as_written(tmp_path):
    """The example session, line by line as a user pastes it into bash from the project's
    folder (fewer events; a facility folder of its own on free ports), each step's result
    checked: nothing in the README is left for the reader to guess."""
    import subprocess
    import sys

    import numpy as np
    import uproot

    from conftest import new_facility_home, stop_everything

    session = readme_session()
    assert "--events 2000000" in session and "casa up" in session and "casa down" in session
    session = session.replace("--events 2000000", "--events 40000")
    work = tmp_path / "session"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))  # '. .venv/bin/activate', as in the project
    f = new_facility_home()
    env = {k: v for k, v in f.env.items() if not k.startswith(("VIRTUAL_ENV", "BEARER_TOKEN"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    # 'casa token issue' stores where $BEARER_TOKEN_FILE says: not in /tmp/bt_u$UID, which
    # the other tests' facilities (other issuers) running beside this one would share.
    env["BEARER_TOKEN_FILE"] = str(tmp_path / "token")
    try:
        done = subprocess.run(
            ["bash", "-e", "-c", session], cwd=work, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        files = sorted((work / "data" / "sim").glob("*.root"))
        assert len(files) == 4
        jets = [uproot.open(p)["Events"]["Jet_pt"].array() for p in files]
        import awkward as ak

        pt = ak.concatenate(jets)
        above = pt[pt > 40]
        mine = pickle.loads((work / "results" / "mine" / "result.pkl").read_bytes())
        assert mine["njet"].values(flow=True).sum() == 40_000
        edges = np.linspace(0, 500, 51)
        flat = ak.to_numpy(ak.flatten(above))
        assert np.array_equal(mine["jet_pt"].values(), np.histogram(flat[flat < 500], edges)[0])
        fileset = json.loads((work / "sim.json").read_text())
        assert sum(s["num_entries"] for s in fileset["sim"]["files"].values()) == 40_000
        local, gateway = (pickle.loads((work / "results" / d / "result.pkl").read_bytes())
                          for d in ("adl5", "adl5-gw"))  # fmt: skip
        assert np.array_equal(local["met"].values(flow=True), gateway["met"].values(flow=True))
        copied = list(work.glob("*.root"))  # what xrdcp fetched
        assert (
            len(copied) == 1
            and copied[0].read_bytes() == (work / "data" / "sim" / copied[0].name).read_bytes()
        )
        assert (f.home / "storage" / "store" / "data" / "sim-store~" / copied[0].name).exists()
        # The skim the ServiceX client fetched, one file per input, printed by the session.
        skims = sorted(work.glob("servicex-cache/*/*.root"))
        assert len(skims) == 4 and all(str(p) in done.stdout for p in skims), done.stdout
        events = ak.concatenate([uproot.open(p)["Events"].arrays() for p in skims])
        muons = ak.concatenate([uproot.open(p)["Events"]["Muon_pt"].array() for p in files])
        assert len(events) == ak.sum(ak.count_nonzero(muons > 20, axis=1) >= 2) > 0
        assert sorted(events.fields) == ["MET_pt", "Muon_pt"]
    finally:
        f.casa("down")
        stop_everything(f.home)
