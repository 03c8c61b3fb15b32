"""Facility storage: files copied under ``/store`` and served through the cache as ``root://``.

Public data go to ``/store/data/DATASET/``, a user's own to ``/store/user/NAME/DATASET/``.
A copy is checked against the original's SHA-256 before anything is registered; if any
file fails, every copy made by that command is removed again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from casa.data.files import FileInfo, sha256_of
from casa.errors import DataError, UsageError


@dataclass(frozen=True)
class FacilityStorage:
    """The storage tree the origin exports, and how clients address it through the cache."""

    root: Path
    cache_url: str
    owner: tuple[int, int] | None = None

    def area(self, dataset: str, user: str | None) -> str:
        """The namespace path for a dataset: ``/store/data/D`` or ``/store/user/U/D``."""
        if user is None:
            return f"/store/data/{dataset}"
        if not user or not all(c.isalnum() or c in "-_." for c in user):
            raise UsageError(f"{user!r} is not a valid user name")
        return f"/store/user/{user}/{dataset}"

    def store(self, dataset: str, files: list[FileInfo], user: str | None = None) -> list[FileInfo]:
        """Copy ``files`` into the dataset's area; return them with their ``root://`` URLs."""
        area = self.area(dataset, user)
        target = self.root / area.lstrip("/")
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
        shutil.rmtree(self.root / self.area(dataset, user).lstrip("/"), ignore_errors=True)

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
