"""Finding ROOT files on disk and reading what the catalog records about each one.

Files are inspected where they are: local paths directly, ``root://`` URLs through XRootD
with the caller's bearer token (:class:`casa.data.sources.TokenXRootDSource`).
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from casa.errors import DataError

ROOT_MAGIC = b"root"


@dataclass(frozen=True)
class FileInfo:
    """One file of a dataset: where it is, which tree to read, how many events and bytes.

    ``uuid`` is the file's own ROOT UUID (as coffea writes it in a preprocessed fileset;
    None in catalogs made before casa recorded it); ``steps`` are the entry ranges a
    fileset gave for the file (coffea's ``steps``), which runs then follow as their chunks.
    """

    url: str
    tree: str
    events: int
    bytes: int
    uuid: str | None = None
    steps: tuple[tuple[int, int], ...] | None = None


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


def inspect_root_file(path: Path | str, tree: str) -> FileInfo:
    """Open ``path`` (a local file, or a ``root://`` URL), check it and read ``tree``'s entries.

    DataError (one sentence naming the file) if it is not a ROOT file, lacks the tree, or is
    truncated or damaged: every basket of the tree, every key and the streamers must lie inside
    the file. Only metadata is read, never the baskets themselves. A ``root://`` URL is read
    through XRootD with the bearer token WLCG discovery finds.
    """
    import uproot

    from casa.data.sources import is_remote

    if isinstance(path, str) and is_remote(path):
        return inspect_remote_file(path, tree)

    path = Path(path)
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
            events, file_uuid = _check_open_file(f, path, tree, size)
    except DataError:
        raise
    except Exception as e:  # uproot raises many kinds on a damaged file
        raise DataError(f"{path} is not a readable ROOT file: {e}") from None
    return FileInfo(url=str(path), tree=tree, events=events, bytes=size, uuid=file_uuid)


def inspect_remote_file(url: str, tree: str) -> FileInfo:
    """:func:`inspect_root_file` for a ``root://`` URL, read with the caller's token."""
    import uproot

    from casa.data.sources import (
        XROOTD_REQUEST_TIMEOUT,
        TokenXRootDSource,
        require_token,
        scrub,
    )

    require_token([url])
    try:
        opened = uproot.open(url, handler=TokenXRootDSource, timeout=XROOTD_REQUEST_TIMEOUT)
    except DataError:
        raise
    except Exception as e:
        reason = scrub(str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = re.sub(r" in file \S+", "", reason)  # the URL starts the sentence already
        if "not a ROOT file" in reason:
            raise DataError(f"{url} is not a ROOT file ({reason})") from None
        raise DataError(
            f"{url} cannot be opened through XRootD ({reason}): check the URL, that its "
            "server is up, and that your token may read it ('casa token show')"
        ) from None
    try:
        with opened as f:
            size = f.file.source.num_bytes
            events, file_uuid = _check_open_file(f, url, tree, size)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{url} is not a readable ROOT file: {scrub(str(e))}") from None
    return FileInfo(url=url, tree=tree, events=events, bytes=size, uuid=file_uuid)


def _check_open_file(f, where: Path | str, tree: str, size: int) -> tuple[int, str]:
    """The entries of ``tree`` in the open file ``f`` and the file's UUID, after its checks."""
    try:
        obj = f.get(tree)
    except Exception:
        check_file_length(f.file, where, size)
        raise
    if obj is None or not hasattr(obj, "num_entries"):
        raise DataError(f"{where} has no tree {tree!r}: {_what_it_holds(f)}")
    check_baskets_inside(obj, where, size)
    check_file_length(f.file, where, size)
    check_keys_and_streamers(f, where, size)
    return int(obj.num_entries), str(f.file.uuid)


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


def check_baskets_inside(tree, path: Path | str, size: int) -> None:
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


def check_file_length(file, path: Path | str, size: int) -> None:
    """DataError if the ROOT header of ``file`` says it is longer than ``size`` bytes."""
    if file.fEND > size:
        raise DataError(
            f"{path} is truncated: its ROOT header says it ends at byte {file.fEND:,}, the file "
            f"has {size:,} bytes; copy it again"
        )


def check_keys_and_streamers(directory, path: Path | str, size: int) -> None:
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
