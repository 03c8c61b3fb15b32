"""The analysis's own folder, shipped to Dask workers as ``python proc.py`` would see it.

``casa run path/to/proc.py:NAME`` imports ``proc.py`` with its folder on ``sys.path``
(:mod:`casa.analysis.registry`); local executors' processes inherit that path. Dask
workers (gateway, Slurm, HTCondor: other hosts, other working directories) get the folder
through :class:`casa.worker.analysis_code.AnalysisFolder`, and for the run the processor's
module is pickled *by reference*, so the workers import it from their copy and its
``__file__`` (``Path(__file__).parent / "corrections.json"``) names the worker's copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casa.errors import AnalysisError

#: The most an analysis folder may hold once packed for the workers: the scheduler keeps it
#: and sends it to every worker, so data files belong in the catalog.
MAX_FOLDER_BYTES = 50 * 1024 * 1024
#: Folders never shipped: version control, caches, environments, notebooks' checkpoints.
SKIPPED_DIRS = {"__pycache__", "node_modules", "venv", "site-packages"}
#: Files never shipped: compiled Python, and ROOT files (data come from the catalog or --files).
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".root"}
#: In a folder that is a home or a temporary folder, only Python packages and these files
#: of at most SMALL_FILE_BYTES at its top level go: not everything else that lives there.
BROAD_FOLDER_SUFFIXES = {".py", ".json", ".yaml", ".yml", ".toml", ".txt", ".csv"}
SMALL_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PackedFolder:
    """An analysis folder packed for the workers."""

    folder: Path
    module_name: str
    module_file: str  # relative to the folder
    digest: str
    data: bytes


def analysis_module(processor: Any) -> Any | None:
    """The user's module ``processor`` was loaded from (registered by value), or None."""
    import cloudpickle

    name = getattr(processor, "__module__", None) or type(processor).__module__
    module = sys.modules.get(name)
    if module is None or not getattr(module, "__file__", None):
        return None
    if name not in cloudpickle.list_registry_pickle_by_value():
        return None
    return module


def _broad(folder: Path) -> bool:
    """Whether ``folder`` is a home, a temporary folder or a root, shipped only in part."""
    broad = {Path.home(), Path("/tmp"), Path("/var/tmp"), Path(tempfile.gettempdir()), Path("/")}
    return folder in {p.resolve() for p in broad}


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_DIRS


def folder_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that go to the workers (see the module's constants)."""
    broad = _broad(folder)
    out = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if not _skipped(d) and not (here / d / "pyvenv.cfg").exists()
            and not (broad and here == folder and not (here / d / "__init__.py").exists())
        )  # fmt: skip
        for f in sorted(files):
            path = here / f
            if _skipped(f) or path.suffix in SKIPPED_SUFFIXES or not path.is_file():
                continue
            if broad and here == folder and (
                path.suffix not in BROAD_FOLDER_SUFFIXES or path.stat().st_size > SMALL_FILE_BYTES
            ):
                continue
            out.append(path)
    return out


def pack_folder(module: Any, limit: int = MAX_FOLDER_BYTES) -> PackedFolder:
    """``module``'s folder as a zip; AnalysisError naming the folder when it is above ``limit``."""
    file = Path(module.__file__).resolve()
    folder = file.parent
    files = folder_files(folder)
    size = sum(p.stat().st_size for p in files)
    if size > limit:
        raise AnalysisError(
            f"the analysis folder {folder} holds {size / 2**20:.1f} MB of files for the "
            f"workers, above the limit of {limit / 2**20:.0f} MB: move data files out of it "
            "(into the catalog with 'casa datasets add', or to storage the workers read)"
        )
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            rel = path.relative_to(folder).as_posix()
            content = path.read_bytes()
            digest.update(rel.encode() + b"\0" + content + b"\0")
            archive.writestr(rel, content)
    return PackedFolder(
        folder, module.__name__, file.relative_to(folder).as_posix(),
        digest.hexdigest()[:16], buffer.getvalue(),
    )  # fmt: skip


@contextlib.contextmanager
def shipped_to(client: Any, processor: Any, sent: dict[str, Any]) -> Iterator[PackedFolder | None]:
    """For one run: ``processor``'s folder on ``client``'s workers and its module pickled by
    reference (by value again afterwards). ``sent`` remembers what this client has already."""
    import cloudpickle

    from casa.errors import ServiceError
    from casa.worker.analysis_code import AnalysisFolder

    module = analysis_module(processor)
    if module is None:
        yield None
        return
    packed = pack_folder(module)
    if sent.get("analysis_code") != packed.digest:
        plugin = AnalysisFolder(
            packed.folder.name, packed.digest, packed.data, {packed.module_name: packed.module_file}
        )
        try:
            client.register_plugin(plugin)
        except Exception as e:
            raise ServiceError(
                f"the workers could not receive the analysis folder {packed.folder} ({e}); "
                "their casa may be older than this one: rebuild the workers' environment"
            ) from e
        sent["analysis_code"] = packed.digest
    # Not thread-safe across concurrent runs of one process: the registration is global.
    cloudpickle.unregister_pickle_by_value(module)
    try:
        yield packed
    finally:
        cloudpickle.register_pickle_by_value(module)
