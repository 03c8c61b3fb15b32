"""Facility storage: files copied under ``/store`` and served through the cache as ``root://``.

Public data go to ``/store/data/DATASET~/``, a user's own to ``/store/user/NAME~/DATASET~/``,
spelled by :func:`casa.names.storage_path` (:mod:`casa.names` says why every name ends in
``~``).

A copy is checked against the original's SHA-256 before anything is registered; if any
file fails, every copy made by that command is removed again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casa.data.files import FileInfo, sha256_of
from casa.errors import DataError, ServiceError
from casa.names import (
    NAME_END,
    NAMED_LEVELS,
    check_storage_name,
    path_of_url,
    storage_path,
    storage_url,
)


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
                copied.append(dataclasses.replace(f, url=url))
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
