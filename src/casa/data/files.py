"""Finding ROOT files on disk and reading what the catalog records about each one."""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

from casa.errors import DataError

ROOT_MAGIC = b"root"


@dataclass(frozen=True)
class FileInfo:
    """One file of a dataset: where it is, which tree to read, how many events and bytes."""

    url: str
    tree: str
    events: int
    bytes: int


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named by ``paths``: plain files, glob patterns, and directories (their ``*.root``).

    Raises a DataError naming the first path that matches nothing.
    """
    found: list[Path] = []
    for spec in paths:
        path = Path(spec).expanduser()
        if glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise DataError(f"no file matches {spec!r}: check the pattern and the folder")
            found.extend(matches)
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*.root") if p.is_file())
            if not matches:
                raise DataError(f"folder {spec} holds no .root files")
            found.extend(matches)
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{spec}: no such file or folder")
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def inspect_root_file(path: Path, tree: str) -> FileInfo:
    """Open ``path`` and read the number of entries of ``tree``; DataError if it cannot."""
    import uproot

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    if magic != ROOT_MAGIC:
        raise DataError(f"{path} is not a ROOT file (it does not start with the ROOT header)")
    try:
        with uproot.open(path) as f:
            obj = f.get(tree)
            if obj is None or not hasattr(obj, "num_entries"):
                raise DataError(f"{path} has no tree {tree!r}: {_what_it_holds(f)}")
            events = int(obj.num_entries)
    except DataError:
        raise
    except Exception as e:  # uproot raises many kinds on a damaged file
        raise DataError(f"{path} is not a readable ROOT file: {e}") from None
    return FileInfo(url=str(path), tree=tree, events=events, bytes=path.stat().st_size)


def _what_it_holds(f) -> str:
    """The trees and RNTuples of an open file, as the end of a sentence with what to do."""
    held: dict[str, list[str]] = {}
    for key, classname in f.classnames().items():
        kind = "RNTuple" if "RNTuple" in classname else classname
        held.setdefault(kind, []).append(key.split(";")[0])
    named = []
    for kind in ("TTree", "TNtuple", "RNTuple"):
        names = sorted(set(held.get(kind, [])))
        if names:
            named.append(f"the {kind}{'s' if len(names) > 1 else ''} {', '.join(names)}")
    if named:
        return f"it holds {' and '.join(named)}; choose one with --tree"
    others = sorted({f"{k.split(';')[0]} ({c})" for k, c in f.classnames().items()})
    return f"it holds no tree ({'its objects: ' + ', '.join(others) if others else 'it is empty'})"
