"""The analysis's own folder, as ``python analysis.py`` would see it, here and on workers.

What goes to the workers and what stays home, the size limit's message, and a multi-module
analysis (a local package that reads a JSON file when imported, a binning file read relative
to the processor's ``__file__``) run locally and on a Dask worker started elsewhere, whose
``sys.path`` knows nothing of the folder: each result checked against numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest
import uproot

import casa
from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.compute.base import Scaling
from casa.compute.code import _by_reference, folder_files, import_analysis_file, pack_folder
from casa.compute.local import FuturesBackend, IterativeBackend
from casa.compute.on_dask import on_dask_client
from casa.data.files import inspect_root_file
from casa.errors import AnalysisError
from casa.worker.analysis_code import AnalysisFolder
from multi_module import expected, set_scale, write_analysis

TREE = "flat"


def _names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder_files(folder)}


def _touch(path: Path, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_caches_environments_version_control_and_root_files_stay_home(tmp_path):
    for name in ("analysis.py", "utils/__init__.py", "utils/jets.py", "data/corr.json",
                 "data/sub/table.csv", "README.md",
                 ".git/HEAD", ".ipynb_checkpoints/a.ipynb", "utils/__pycache__/jets.pyc",
                 "node_modules/x/index.js", "venv/bin/python", "site-packages/p.py",
                 "myenv/pyvenv.cfg", "myenv/lib/m.py", "stale.pyc", "events.root", ".env"):  # fmt: skip
        _touch(tmp_path / name)
    assert _names(tmp_path) == {
        "analysis.py", "utils/__init__.py", "utils/jets.py", "data/corr.json",
        "data/sub/table.csv", "README.md",
    }  # fmt: skip


def test_a_home_folder_ships_only_its_packages_and_small_top_level_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _touch(tmp_path / "analysis.py")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "big.json", 2 * 1024 * 1024)
    _touch(tmp_path / "photo.png")
    _touch(tmp_path / "mypkg/__init__.py")
    _touch(tmp_path / "mypkg/data/table.bin")
    _touch(tmp_path / "Downloads/thesis.pdf")
    _touch(tmp_path / "Downloads/script.py")
    assert _names(tmp_path) == {"analysis.py", "notes.txt", "mypkg/__init__.py",
                                "mypkg/data/table.bin"}  # fmt: skip


def test_a_folder_above_the_limit_is_named_with_its_biggest_file_and_what_to_do(tmp_path):
    _touch(tmp_path / "analysis.py", 100)
    _touch(tmp_path / "data/huge.npz", 3 * 1024 * 1024)
    module = SimpleNamespace(__file__=str(tmp_path / "analysis.py"), __name__="casa_user_x")
    with pytest.raises(AnalysisError) as caught:
        pack_folder(module, limit=2 * 1024 * 1024)
    text = str(caught.value)
    assert f"the analysis folder {tmp_path} holds 3.0 MB" in text
    assert "above the limit of 2 MB" in text
    assert "the biggest is data/huge.npz, 3.0 MB" in text
    assert "casa datasets add" in text


def test_the_version_of_a_folder_follows_its_contents_not_its_times(tmp_path):
    proc = write_analysis(tmp_path, "digest")
    module = SimpleNamespace(__file__=str(proc), __name__="casa_user_analysis_x")
    first = pack_folder(module)
    assert first.module_file == "analysis.py" and first.folder == tmp_path
    os.utime(proc, (1, 1))
    assert pack_folder(module).digest == first.digest
    set_scale(tmp_path, "digest", 3.0)
    assert pack_folder(module).digest != first.digest


def test_the_workers_plugin_unpacks_imports_and_forgets(tmp_path):
    folder = tmp_path / "home" / "ana"
    proc = write_analysis(folder, "plugin")
    packed = pack_folder(SimpleNamespace(__file__=str(proc), __name__="casa_user_plugin_t"))
    plugin = AnalysisFolder(
        "ana", packed.digest, packed.data, {"casa_user_plugin_t": "analysis.py"}
    )
    worker = SimpleNamespace(local_directory=str(tmp_path / "worker"))
    plugin.setup(worker)
    try:
        import importlib

        module = importlib.import_module("casa_user_plugin_t")
        copy = tmp_path / "worker" / f"casa-analysis-{packed.digest}" / "ana"
        assert module.__file__ == str(copy / "analysis.py")
        assert sys.modules["helpers_plugin"].__file__ == str(copy / "helpers_plugin/__init__.py")
        assert module.SCALE == 2.0
    finally:
        plugin.teardown(worker)
    assert str(copy) not in sys.path
    assert "casa_user_plugin_t" not in sys.modules and "helpers_plugin" not in sys.modules
    assert not copy.parent.exists()


def test_dask_runs_pickle_the_file_by_reference_and_local_runs_by_value(tmp_path):
    proc = write_analysis(tmp_path, "pickling")
    module = import_analysis_file(proc)

    def by_value() -> bool:
        return b"_make_skeleton_class" in cloudpickle.dumps(module.Scaled)

    assert by_value()
    with _by_reference(module):
        with _by_reference(module):  # two runs at once on two clusters
            assert not by_value()
        assert not by_value()
    assert by_value()


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """Two flat files, the catalog export a notebook gets, and the column read by uproot."""
    d = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(11)
    files, infos, xs = {}, [], []
    for i, n in enumerate((3000, 2000)):
        path = d / f"flat_{i}.root"
        x = rng.exponential(20.0, n)
        with uproot.recreate(path) as f:
            f.mktree(TREE, {"x": x.dtype})
            f[TREE].extend({"x": x})
        files[str(path)] = {"object_path": TREE, "num_entries": n}
        infos.append(inspect_root_file(path, TREE))
    for path in files:
        xs.append(uproot.open(path)[TREE]["x"].array(library="np"))
    catalog = d / "catalog.json"
    catalog.write_text(json.dumps({"flat": {"files": files, "schema": "BaseSchema"}}))
    return SimpleNamespace(infos=infos, x=np.concatenate(xs), catalog=catalog)


@pytest.mark.parametrize("backend", ["iterative", "futures"])
def test_a_multi_module_analysis_runs_locally(flat, tmp_path, backend):
    proc = write_analysis(tmp_path / "my analysis", f"local_{backend}")
    processor = load_processor(f"{proc}:Scaled")
    opened = (
        IterativeBackend() if backend == "iterative" else FuturesBackend(None, Scaling(workers=2))
    )
    out = run_analysis(processor, "flat", flat.infos, opened, chunksize=1000, schema="BaseSchema")
    assert np.array_equal(out.output["x"].values(), expected(flat.x))
    assert set(out.output["package_at"]) == {
        str(tmp_path / "my analysis" / f"helpers_local_{backend}")
    }


@pytest.fixture
def remote_worker(tmp_path):
    """A scheduler here and a worker process started in a folder of its own, its sys.path
    its environment's alone: as a gateway's, Slurm's or HTCondor's worker is."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, dashboard_address=None, scheduler_port=0) as cluster:
        where = tmp_path / "worker-home"
        where.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
             "--nthreads", "1", "--no-dashboard", "--no-nanny",
             "--local-directory", str(where)],
            cwd=where, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=60)
                yield client, where
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_a_multi_module_analysis_on_a_worker_elsewhere_and_again_when_it_changed(
    flat, tmp_path, remote_worker, monkeypatch
):
    client, worker_home = remote_worker
    folder = tmp_path / "ana"
    proc = write_analysis(folder, "remote")
    spec = f"{proc}:Scaled"

    def ran_at(result) -> Path:
        (package_at,) = result["package_at"]
        (processor_at,) = result["processor_at"]
        assert Path(processor_at).parent == Path(package_at).parent
        return Path(package_at).parent

    # casa run's path, through the runner.
    out = run_analysis(load_processor(spec), "flat", flat.infos,
                       _OnClient(client), chunksize=1000, schema="BaseSchema")  # fmt: skip
    assert np.array_equal(out.output["x"].values(), expected(flat.x))
    first = ran_at(out.output)
    assert first != folder and first.is_relative_to(worker_home), first
    assert first.name == "ana" and first.parent.name.startswith("casa-analysis-")
    assert (first / "binning.json").is_file()

    # A notebook's casa.run, after the user changed a file the package reads when imported:
    # the new version reaches the worker, and the old copy is gone.
    set_scale(folder, "remote", 3.0)
    monkeypatch.setenv("CASA_CATALOG", str(flat.catalog))
    result = casa.run(spec, "flat", client, chunksize=1000)
    assert np.array_equal(result["x"].values(), expected(flat.x, scale=3.0))
    second = ran_at(result)
    assert second != first and second.is_relative_to(worker_home)
    deadline = time.monotonic() + 10
    while first.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not first.exists(), "the worker kept the folder's old version"


class _OnClient:
    """A compute backend on a client the test holds (casa's Dask backends' shared part)."""

    name = "remote-worker"
    callers_token = False
    ships_analysis_folder = True

    def __init__(self, client):
        self.client = client

    def __enter__(self):
        return on_dask_client(self.client, self.name, None)

    def __exit__(self, *exc):
        return False


def test_a_processor_from_a_module_the_user_imported_reaches_a_worker_elsewhere(
    flat, tmp_path, remote_worker, monkeypatch
):
    """A notebook's ``from myproc import Scaled`` (a module beside the notebook, not a file
    casa imported), and a ``file.py`` whose processor's class comes from a module beside it:
    the module's folder goes to the worker, which imports the module by its own name."""
    import importlib

    client, worker_home = remote_worker
    folder = tmp_path / "notebooks"
    write_analysis(folder, "imported").rename(folder / "myproc_imported.py")
    monkeypatch.syspath_prepend(str(folder))  # the kernel's working folder
    monkeypatch.setenv("CASA_CATALOG", str(flat.catalog))
    module = importlib.import_module("myproc_imported")
    try:
        result = casa.run(module.Scaled(), "flat", client, chunksize=1000)
        assert np.array_equal(result["x"].values(), expected(flat.x))
        (processor_at,) = result["processor_at"]
        assert Path(processor_at).is_relative_to(worker_home), processor_at
        assert Path(processor_at).name == "myproc_imported.py"

        (folder / "run_me.py").write_text(
            "from myproc_imported import Scaled\n\nprocessor = Scaled()\n"
        )
        set_scale(folder, "imported", 4.0)
        importlib.reload(importlib.import_module("helpers_imported.corrections"))
        out = run_analysis(load_processor(f"{folder / 'run_me.py'}:processor"), "flat",
                           flat.infos, _OnClient(client), chunksize=1000, schema="BaseSchema")  # fmt: skip
        assert np.array_equal(out.output["x"].values(), expected(flat.x, scale=4.0))
        (processor_at,) = out.output["processor_at"]
        assert Path(processor_at).is_relative_to(worker_home), processor_at
    finally:
        for name in [n for n in sys.modules if n.startswith(("myproc_imp", "helpers_imp"))]:
            del sys.modules[name]


def test_installed_packages_and_the_standard_library_are_never_shipped():
    from casa.analysis.processors import DimuonProcessor  # casa's own (an editable install here)
    from casa.compute.code import analysis_module

    assert analysis_module(DimuonProcessor()) is None
    assert analysis_module(json.dumps) is None
    assert analysis_module(np.sum) is None
