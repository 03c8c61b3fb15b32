"""The analysis's own folder on the workers, as ``python proc.py`` would see it.

``casa run path/to/proc.py:NAME`` (and ``casa.run("path/to/proc.py:NAME", ...)``) imports
``proc.py`` with its folder first on ``sys.path`` (:func:`import_analysis_file`), so
``import utils`` and ``Path(__file__).parent / "corrections.json"`` work in the caller.
Local executors need nothing more: the iterative executor is this process, and the
process pool's and the local Dask cluster's processes are spawned with this ``sys.path``
and this machine's files; between runs they receive the file's own code by value.

Dask workers elsewhere (gateway, Slurm, HTCondor: other accounts, hosts and working
directories) get the folder as a zip (:func:`shipped_to`), unpacked on each of them by
:class:`casa.worker.analysis_code.AnalysisFolder`, first on their ``sys.path``. For those
runs the file's module is pickled *by reference*: the workers import it from their copy,
so its module-level code runs there as under ``python proc.py`` and its ``__file__`` names
the workers' copy, next to the data files that came with it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import threading
import traceback
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casa.errors import AnalysisError, ServiceError

#: The most an analysis folder may hold for the workers: the scheduler keeps it and sends it
#: to every worker, so data belong in the catalog, not beside the code.
MAX_FOLDER_BYTES = 50 * 1024 * 1024
#: Folders never shipped: caches and environments (and every folder whose name starts with
#: a dot: version control, notebooks' checkpoints, editors' settings).
SKIPPED_DIRS = {"__pycache__", "node_modules", "venv", "site-packages"}
#: Files never shipped: compiled Python, and ROOT files (data come from the catalog).
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".root"}
#: In a folder that is a home, a temporary folder or ``/``, only its Python packages and its
#: top-level files of these kinds, each of at most SMALL_FILE_BYTES, go to the workers.
BROAD_FOLDER_SUFFIXES = {".py", ".json", ".yaml", ".yml", ".toml", ".txt", ".csv"}
SMALL_FILE_BYTES = 1024 * 1024

#: Modules imported from a user's file by casa: module name -> module.
_ANALYSIS_MODULES: dict[str, Any] = {}
#: Runs on Dask workers now pickling each of those modules by reference.
_BY_REFERENCE: dict[str, int] = {}
_LOCK = threading.Lock()


def import_analysis_file(path: Path) -> Any:
    """Import a user's analysis file as ``python path`` would: its folder first on
    ``sys.path``, its module under a name of its own (two files named alike stay apart),
    its code pickled by value for local processes and shipped for Dask workers."""
    import cloudpickle

    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"casa_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AnalysisError(f"{path} cannot be imported as a Python module")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise AnalysisError(f"importing {path} failed", details=traceback.format_exc()) from None
    cloudpickle.register_pickle_by_value(module)
    with _LOCK:
        _ANALYSIS_MODULES[name] = module
    return module


def analysis_module(processor: Any) -> Any | None:
    """The module of the user's own code that ``processor`` comes from, or None.

    Either a file casa imported (``casa run path/to/file.py:NAME``), or a module the user
    imported themselves from a folder of their own: a notebook's ``from myproc import
    MyProcessor``, or a class that ``file.py`` imports from a module beside it. Never a
    module of an installed package or of Python's own library, nor a notebook's
    ``__main__`` (cloudpickle sends what a notebook defines by value).
    """
    name = getattr(processor, "__module__", None) or type(processor).__module__
    return _ANALYSIS_MODULES.get(name) or _users_own_module(name)


def _users_own_module(name: str | None) -> Any | None:
    module = sys.modules.get(name or "")
    file = getattr(module, "__file__", None)
    if module is None or not file or name == "__main__":
        return None
    path = Path(file).resolve()
    if any(path.is_relative_to(place) for place in _installed_places()):
        return None
    if name.partition(".")[0] in _installed_top_level_names():  # editable installs too
        return None
    return module


@functools.cache
def _installed_places() -> tuple[Path, ...]:
    """Where Python's library and installed packages live."""
    import site
    import sysconfig

    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    places |= {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    places |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(Path(p).resolve() for p in places if p)


@functools.cache
def _installed_top_level_names() -> frozenset[str]:
    """The top-level module names of every installed distribution."""
    from importlib.metadata import packages_distributions

    return frozenset(packages_distributions())


def code_folder(module: Any) -> Path:
    """The folder that goes to the workers with ``module``: the one its import started from
    (``/work`` for ``/work/pkg/sub.py`` imported as ``pkg.sub``), so that the workers import
    it by the same name."""
    file = Path(module.__file__).resolve()
    folder = file.parent
    depth = module.__name__.count(".") + (file.stem == "__init__")
    if module.__name__ in _ANALYSIS_MODULES:
        depth = 0  # a file casa imported under a name of its own
    for _ in range(depth):
        folder = folder.parent
    return folder


@dataclass(frozen=True)
class PackedFolder:
    """An analysis folder packed for the workers."""

    folder: Path
    module_name: str
    module_file: str  # relative to the folder
    digest: str
    data: bytes


def _broad(folder: Path) -> bool:
    """Whether ``folder`` is a home, a temporary folder or ``/``, shipped only in part."""
    broad = {Path.home(), Path("/tmp"), Path("/var/tmp"), Path(tempfile.gettempdir()), Path("/")}
    return folder in {p.resolve() for p in broad}


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_DIRS


def folder_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that go to the workers (see this module's constants)."""
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
            if (
                broad
                and here == folder
                and (
                    path.suffix not in BROAD_FOLDER_SUFFIXES
                    or path.stat().st_size > SMALL_FILE_BYTES
                )
            ):
                continue
            out.append(path)
    return out


def shipped_files(folder: Path, limit: int = MAX_FOLDER_BYTES) -> list[Path]:
    """:func:`folder_files`; AnalysisError naming the folder when they hold more than ``limit``."""
    files = folder_files(folder)
    size = sum(p.stat().st_size for p in files)
    if size > limit:
        biggest = max(files, key=lambda p: p.stat().st_size)
        raise AnalysisError(
            f"the analysis folder {folder} holds {size / 2**20:.1f} MB of files for the "
            f"workers, above the limit of {limit / 2**20:.0f} MB (the biggest is "
            f"{biggest.relative_to(folder)}, {biggest.stat().st_size / 2**20:.1f} MB): move "
            "data out of the folder, into the catalog with 'casa datasets add' or to storage "
            "the workers read"
        )
    return files


def check_analysis_folder(processor: Any) -> None:
    """Before any worker starts: AnalysisError when ``processor``'s folder cannot travel."""
    module = analysis_module(processor)
    if module is not None:
        shipped_files(code_folder(module))


def pack_folder(module: Any, limit: int = MAX_FOLDER_BYTES) -> PackedFolder:
    """``module``'s folder as a zip; AnalysisError naming the folder when it is above ``limit``."""
    file = Path(module.__file__).resolve()
    folder = code_folder(module)
    files = shipped_files(folder, limit)
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
def _by_reference(module: Any) -> Iterator[None]:
    """``module`` pickled by reference while any Dask run of this process uses it."""
    import cloudpickle

    name = module.__name__
    with _LOCK:
        if not _BY_REFERENCE.get(name):
            cloudpickle.unregister_pickle_by_value(module)
        _BY_REFERENCE[name] = _BY_REFERENCE.get(name, 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _BY_REFERENCE[name] -= 1
            if not _BY_REFERENCE[name]:
                del _BY_REFERENCE[name]
                cloudpickle.register_pickle_by_value(module)


@contextlib.contextmanager
def shipped_to(client: Any, processor: Any, sent: dict[str, Any]) -> Iterator[PackedFolder | None]:
    """For one run: the folder of ``processor``'s file on ``client``'s workers, and its
    module pickled by reference. ``sent`` remembers which version this client's workers
    hold, so an unchanged folder is packed but not sent again."""
    from casa.worker.analysis_code import AnalysisFolder

    module = analysis_module(processor)
    if module is None:
        yield None
        return
    packed = pack_folder(module)
    if sent.get("analysis_code") != packed.digest:
        # A file casa imported is found by its own name; the user's own modules by theirs,
        # from the folder first on the workers' sys.path.
        by_name = {packed.module_name: packed.module_file} if _imported_by_casa(module) else {}
        plugin = AnalysisFolder(packed.folder.name, packed.digest, packed.data, by_name)
        try:
            client.register_plugin(plugin)
        except Exception as e:
            raise ServiceError(
                f"the workers could not take the analysis folder {packed.folder}: {e} (a "
                "workers' environment with another casa than this one cannot: rebuild it, "
                "or run with a cluster of this environment)"
            ) from e
        sent["analysis_code"] = packed.digest
    if not _imported_by_casa(module):  # pickled by reference already
        yield packed
        return
    with _by_reference(module):
        yield packed


def _imported_by_casa(module: Any) -> bool:
    return _ANALYSIS_MODULES.get(module.__name__) is module
