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
    """Open ``path``, check it is whole and read the number of entries of ``tree``.

    DataError (one sentence naming the file) if it is not a ROOT file, lacks the tree, or is
    truncated or damaged: every basket of the tree, every key and the streamers must lie inside
    the file. Only metadata is read, never the baskets themselves.
    """
    import uproot

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    if magic != ROOT_MAGIC:
        raise DataError(f"{path} is not a ROOT file (it does not start with the ROOT header)")
    size = path.stat().st_size
    try:
        with uproot.open(path) as f:
            try:
                obj = f.get(tree)
            except Exception:
                check_file_length(f.file, path, size)
                raise
            if obj is None or not hasattr(obj, "num_entries"):
                raise DataError(f"{path} has no tree {tree!r}: {_what_it_holds(f)}")
            check_baskets_inside(obj, path, size)
            check_file_length(f.file, path, size)
            check_keys_and_streamers(f, path, size)
            events = int(obj.num_entries)
    except DataError:
        raise
    except Exception as e:  # uproot raises many kinds on a damaged file
        raise DataError(f"{path} is not a readable ROOT file: {e}") from None
    return FileInfo(url=str(path), tree=tree, events=events, bytes=size)


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


def check_baskets_inside(tree, path: Path, size: int) -> None:
    """DataError naming the first basket of ``tree`` (a TTree) that ends past ``size`` bytes."""
    from uproot.behaviors.TTree import TTree

    if not isinstance(tree, TTree):  # an RNTuple has pages, not baskets: its keys are checked
        return
    for branch in tree.itervalues(recursive=True):
        written = int(branch.member("fWriteBasket"))
        seeks = branch.member("fBasketSeek")[:written]
        ends = seeks + branch.member("fBasketBytes")[:written]
        outside = (ends > size) | (seeks <= 0)
        if outside.any():
            i = int(outside.argmax())
            raise DataError(
                f"{path} is truncated: basket {i} of branch {branch.name} ends at byte "
                f"{int(ends[i]):,}, the file has {size:,} bytes; copy it again"
            )


def check_file_length(file, path: Path, size: int) -> None:
    """DataError if the ROOT header of ``file`` says it is longer than ``size`` bytes."""
    if file.fEND > size:
        raise DataError(
            f"{path} is truncated: its ROOT header says it ends at byte {file.fEND:,}, the file "
            f"has {size:,} bytes; copy it again"
        )


def check_keys_and_streamers(directory, path: Path, size: int) -> None:
    """DataError if a key of ``directory`` (recursively) or the streamers lie past ``size``."""
    for name in directory.keys(recursive=True):
        key = directory.key(name)
        end = key.fSeekKey + key.fNbytes
        if end > size:
            raise DataError(
                f"{path} is truncated: its key {name} ends at byte {end:,}, the file has "
                f"{size:,} bytes; copy it again"
            )
    file = directory.file
    if file.fSeekInfo + file.fNbytesInfo > size:
        raise DataError(
            f"{path} is truncated: its streamers end at byte {file.fSeekInfo + file.fNbytesInfo:,}"
            f", the file has {size:,} bytes; copy it again"
        )
    file.streamers  # noqa: B018 - reads and parses the streamer record, raising if it is damaged
