"""Runs inside Dask workers: the analysis's own folder, unpacked and importable as at home.

casa's own plugin rather than distributed's ``UploadDirectory``: that one is a nanny plugin
(workers without a nanny never get the folder), it puts the folder on the *nanny's*
``sys.path`` (a running worker process sees it only after ``restart_workers``, which drops
casa's caches), and it unpacks every version into one folder named like the analysis's, so
files removed since stay and two analyses of the same folder name mix. This plugin unpacks
each version into a folder of its own under the worker's local directory, puts it first on
the worker's own ``sys.path``, imports the named file by the module name the caller gave it
(so its ``__file__`` is the worker's copy), and undoes all that when it is replaced.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import io
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

#: One analysis folder per cluster at a time: registering another one replaces it.
PLUGIN_NAME = "casa-analysis-code"


class _ShippedModules(importlib.abc.MetaPathFinder):
    """Finds the caller's by-name modules (``casa_user_proc_...``) in the unpacked folder."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        file = self.files.get(name)
        return importlib.util.spec_from_file_location(name, file) if file else None


class AnalysisFolder(WorkerPlugin):
    """The analysis's folder as a zip, unpacked on each worker (also those joining later)."""

    name = PLUGIN_NAME

    def __init__(self, folder_name: str, digest: str, data: bytes, modules: dict[str, str]):
        self.folder_name = folder_name
        self.digest = digest
        self.data = data
        #: module name -> file inside the folder, imported under that name on the workers.
        self.modules = modules
        self._path: str | None = None
        self._finder: _ShippedModules | None = None

    def setup(self, worker: Any) -> None:
        """Unpack (once per version), put the folder first on sys.path, make the modules findable."""
        root = Path(worker.local_directory) / f"casa-analysis-{self.digest}"
        target = root / self.folder_name
        if not target.is_dir():
            staging = Path(f"{root}.partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
                archive.extractall(staging / self.folder_name)
            os.replace(staging, root)
        self._path = str(target)
        sys.path.insert(0, self._path)
        files = {name: str(target / rel) for name, rel in self.modules.items()}
        self._finder = _ShippedModules(files)
        sys.meta_path.insert(0, self._finder)
        importlib.invalidate_caches()

    def teardown(self, worker: Any) -> None:
        """Forget this folder: off sys.path, its modules unloaded, its files removed."""
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        if self._path is None:
            return
        while self._path in sys.path:
            sys.path.remove(self._path)
        prefix = self._path + os.sep
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(prefix):
                del sys.modules[name]
        shutil.rmtree(Path(self._path).parent, ignore_errors=True)
        importlib.invalidate_caches()
