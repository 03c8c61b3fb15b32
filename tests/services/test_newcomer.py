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
