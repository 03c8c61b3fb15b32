"""Facility storage: files copied under ``/store`` and served through the cache as ``root://``.

Public data go to ``/store/data/DATASET~/``, a user's own to ``/store/user/NAME~/DATASET~/``.
Every folder casa makes for a name ends in :data:`NAME_END`, a character no user or dataset
name may hold: Debian's XRootD 5.5.3 grants a token's scope to every path that merely starts
with it (``/store/user/ann`` would read ``/store/user/anna/...``; fixed upstream in xrootd
PR #2152), so no scope path casa mints may be a string prefix of another name's paths.
:func:`storage_path` is the one place that turns a path a person writes into this spelling.

A copy is checked against the original's SHA-256 before anything is registered; if any
file fails, every copy made by that command is removed again.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casa.data.files import FileInfo, sha256_of
from casa.errors import DataError, ServiceError, UsageError

#: Ends every storage folder named for a user or a dataset (never part of a name).
NAME_END = "~"

#: How many name components follow each namespace: ``data/DATASET``, ``user/NAME/DATASET``.
NAMED_LEVELS = {"data": 1, "user": 2}

#: What a user or dataset name may hold in storage.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

_URL_PATH = re.compile(r"^(root://[^/]+/)(/?store/.*)$")


def check_storage_name(name: str, what: str = "dataset name") -> str:
    """``name`` if it can name a storage folder; UsageError in one sentence if not."""
    if not isinstance(name, str) or not _NAME_CHARS.fullmatch(name):
        raise UsageError(
            f"{what} {name!r} cannot name a folder in facility storage: use letters, digits, "
            "'-', '_' and '.', starting with a letter, digit or '_' (no '/', '..' or "
            f"{NAME_END!r})"
        )
    return name


def _canonical_parts(path: str) -> list[str]:
    """Components of an absolute path; UsageError for ``..`` (XRootD would pop it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"the path {path!r} holds '..': give it without")
    return parts


def storage_path(path: str) -> str:
    """A facility path as storage spells it: ``/store/user/ann/d/f.root`` ->
    ``/store/user/ann~/d~/f.root``. Paths already so spelled come back unchanged."""
    parts = _canonical_parts(path)
    if len(parts) >= 2 and parts[0] == "store" and parts[1] in NAMED_LEVELS:
        named = NAMED_LEVELS[parts[1]]
        for i in range(2, min(len(parts), 2 + named)):
            parts[i] = parts[i].removesuffix(NAME_END) + NAME_END
    return "/" + "/".join(parts)


def scope_path(path: str) -> str:
    """The storage spelling of a scope's path, which must name a namespace, a user's area or
    a dataset (never a file, which no terminator could close); UsageError otherwise."""
    parts = _canonical_parts(path)
    if parts in ([], ["store"]):
        return "/" + "/".join(parts)
    if len(parts) < 2 or parts[0] != "store" or parts[1] not in NAMED_LEVELS:
        raise UsageError(
            f"the scope path {path!r} is outside facility storage: scopes name /store/data, "
            "/store/user, a user's area or a dataset"
        )
    if len(parts) > 2 + NAMED_LEVELS[parts[1]]:
        raise UsageError(
            f"the scope path {path!r} names a file: scopes name a user's area or a dataset"
        )
    for name in parts[2:]:
        check_storage_name(name.removesuffix(NAME_END), "the name")
    return storage_path(path)


def close_scope(scope: str) -> str:
    """A WLCG scope with its storage path spelled as storage does (``storage.*:PATH``)."""
    name, colon, path = scope.partition(":")
    if not colon or not name.startswith("storage."):
        return scope
    return f"{name}:{scope_path(path or '/')}"


def storage_url(url: str) -> str:
    """A ``root://HOST//store/...`` URL with its path as storage spells it; others unchanged."""
    match = _URL_PATH.match(url)
    if match is None:
        return url
    return match.group(1) + "/" + storage_path(match.group(2)).lstrip("/")


def path_of_url(url: str) -> str | None:
    """The ``/store/...`` path of a ``root://HOST//store/...`` URL, or None for other URLs."""
    match = _URL_PATH.match(url)
    return "/" + match.group(2).lstrip("/") if match else None


def dataset_area(dataset: str, urls: list[str]) -> str | None:
    """The storage folder casa stored ``dataset``'s files in (as storage spells it), or None
    if they are not all in that one folder (files registered where they were)."""
    folders = set()
    for url in urls:
        path = path_of_url(url)
        if path is None:
            return None
        folders.add(storage_path(path).rsplit("/", 1)[0])
    if len(folders) != 1:
        return None
    (folder,) = folders
    parts = folder.strip("/").split("/")
    depth = 2 + NAMED_LEVELS.get(parts[1] if len(parts) > 1 else "", -99)
    if len(parts) != depth or parts[0] != "store" or parts[-1] != dataset + NAME_END:
        return None
    return folder


def old_layout_folders(root: Path) -> list[Path]:
    """Folders under ``root/store`` named for a user or dataset without :data:`NAME_END`
    (facility storage written before casa closed its names), deepest first."""
    found: list[Path] = []
    for namespace, levels in NAMED_LEVELS.items():
        top = root / "store" / namespace
        level = [top] if top.is_dir() else []
        for _ in range(levels):
            below = []
            for folder in level:
                for entry in sorted(folder.iterdir()):
                    if entry.is_dir() and not entry.name.startswith("."):
                        below.append(entry)
                        if not entry.name.endswith(NAME_END):
                            found.append(entry)
            level = below
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def migrate_layout(
    root: Path,
    rewrite_urls: Callable[[Callable[[str], str]], int],
    servers: tuple[str, ...],
) -> list[str]:
    """Rename storage written in the old layout to :func:`storage_path`'s and rewrite the
    catalog's URLs into it (``rewrite_urls(function)``, one transaction); return what was
    renamed. Only URLs of this facility's ``servers`` (``root://HOST:PORT``) whose new path
    is a file in ``root`` change, never another site's.

    Each step can be repeated: a migration cut short is finished by the next one.
    """

    def into_this_storage(url: str) -> str:
        new = storage_url(url)
        path = path_of_url(new)
        if new == url or path is None or not url.startswith(tuple(s + "/" for s in servers)):
            return url
        return new if (root / path.lstrip("/")).is_file() else url

    renamed: list[tuple[Path, Path]] = []
    try:
        for old in old_layout_folders(root):
            new = old.with_name(old.name + NAME_END)
            if new.exists():
                raise ServiceError(
                    f"facility storage holds both {old} and {new}: move one of them away, then "
                    "run 'casa up' again"
                )
            os.rename(old, new)
            renamed.append((old, new))
        rewrite_urls(into_this_storage)
    except BaseException:
        for old, new in reversed(renamed):
            os.rename(new, old)
        raise
    return [f"{old.relative_to(root)} -> {new.name}" for old, new in renamed]


@dataclass(frozen=True)
class FacilityStorage:
    """The storage tree the origin exports, and how clients address it through the cache."""

    root: Path
    cache_url: str
    owner: tuple[int, int] | None = None

    def area(self, dataset: str, user: str | None) -> str:
        """The storage path of a dataset: ``/store/data/D~`` or ``/store/user/U~/D~``."""
        check_storage_name(dataset)
        if user is None:
            return storage_path(f"/store/data/{dataset}")
        check_storage_name(user, "user name")
        return storage_path(f"/store/user/{user}/{dataset}")

    def folder(self, area: str) -> Path:
        """Where the storage path ``area`` lies on this host's disk."""
        return self.root / storage_path(area).lstrip("/")

    def store(self, dataset: str, files: list[FileInfo], user: str | None = None) -> list[FileInfo]:
        """Copy ``files`` into the dataset's area; return them with their ``root://`` URLs."""
        area = self.area(dataset, user)
        target = self.folder(area)
        if target.exists():
            raise DataError(
                f"{area} already exists in facility storage: remove the dataset first or "
                "choose another name"
            )
        names = [Path(f.url).name for f in files]
        if len(set(names)) != len(names):
            raise DataError("two of the files share a name; storage keeps one folder per dataset")
        copied: list[FileInfo] = []
        try:
            target.mkdir(parents=True)
            for f, name in zip(files, names, strict=True):
                destination = target / name
                tmp = target / f".{name}.part"
                shutil.copyfile(f.url, tmp)
                if sha256_of(tmp) != sha256_of(Path(f.url)):
                    raise DataError(f"the copy of {f.url} in facility storage differs from it")
                os.replace(tmp, destination)
                os.chmod(destination, 0o644)
                url = f"{self.cache_url.rstrip('/')}/{area}/{name}"
                copied.append(FileInfo(url, f.tree, f.events, f.bytes))
            self._hand_over(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return copied

    def remove(self, dataset: str, user: str | None = None) -> None:
        """Delete a dataset's area (used when registering it failed)."""
        shutil.rmtree(self.folder(self.area(dataset, user)), ignore_errors=True)

    def set_aside(self, area: str) -> Path | None:
        """Move the folder of ``area`` out of the namespace (one rename) and return where it
        went (also a folder a removal cut short left there); None if there is neither."""
        folder = self.folder(area)
        aside = self.aside(area)
        if folder.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(folder, aside)
        return aside if aside.is_dir() else None

    def put_back(self, area: str) -> None:
        """Undo :meth:`set_aside`."""
        if self.aside(area).is_dir() and not self.folder(area).exists():
            os.rename(self.aside(area), self.folder(area))

    def aside(self, area: str) -> Path:
        """Where :meth:`set_aside` moves the folder of ``area``: hidden, outside every scope's
        namespace of names."""
        folder = self.folder(area)
        return folder.with_name(f".{folder.name}.removed")

    def _hand_over(self, target: Path) -> None:
        os.chmod(target, 0o755)
        if self.owner is None:
            return
        uid, gid = self.owner
        path = target
        while path != self.root and self.root in path.parents:
            os.chown(path, uid, gid)
            path = path.parent
        for entry in target.iterdir():
            os.chown(entry, uid, gid)
