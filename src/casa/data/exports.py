"""The catalog as notebooks read it: coffea filesets rewritten whenever the catalog changes.

The database is private (it holds password hashes too), so users' notebooks read exports:

- ``services/hub/catalog.json`` (0644): the public datasets, for everyone;
- ``~NAME/.casa/catalog.json`` (0600, NAME's): the public datasets and NAME's own private
  ones (those stored under ``/store/user/NAME~/``). ``casa.datasets()`` reads it
  (``$CASA_CATALOG``).

:func:`facility_catalog` opens the catalog so that every change (add, remove, import, a
new cache address) rewrites the exports after it is committed: a dataset reaches running
notebooks as soon as it exists. Writers take a lock, so two changes at once cannot leave
an export older than the catalog.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
from collections.abc import Iterable, Iterator
from pathlib import Path

from casa.config import FacilityPaths
from casa.data.catalog import DatasetCatalog
from casa.filesystem import PASSABLE_FOLDER, USER_FOLDER, UserFolder, write_file
from casa.names import NAME_END, path_of_url

#: The name of every export, public (under ``services/hub/``) or a user's (``~/.casa/``).
EXPORT_NAME = "catalog.json"


def dataset_owners(entry: dict) -> set[str]:
    """The users whose private areas (``/store/user/NAME~/``) hold a fileset entry's files."""
    owners = set()
    for url in entry.get("files", {}):
        parts = (path_of_url(url) or "").strip("/").split("/")
        if len(parts) > 2 and parts[:2] == ["store", "user"]:
            owners.add(parts[2].removesuffix(NAME_END))
    return owners


def readable_by(fileset: dict, user: str | None) -> dict:
    """The datasets of ``fileset`` that ``user`` may read: the public ones and their own."""
    return {name: e for name, e in fileset.items() if dataset_owners(e) <= {user} - {None}}


class CatalogExports:
    """The exports of one facility's catalog: the public one and each user's."""

    def __init__(self, paths: FacilityPaths):
        self.paths = paths
        self.public_file = paths.services / "hub" / EXPORT_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = self.public_file.parent
        for each in (self.paths.services, folder):  # as 'casa up' makes them
            each.mkdir(mode=PASSABLE_FOLDER, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def refresh(self, catalog: DatasetCatalog) -> list[str]:
        """Rewrite the public export and every user's; the problems, one sentence each.

        A user's export is written when they have one already (their notebook server ran
        once) or when they own a private dataset. A user whose export cannot be written is
        reported, not fatal: the catalog has changed already, and the hub writes the
        user's export again when their server next starts.
        """
        problems = []
        with self._locked():
            fileset = catalog.export_fileset()
            self._write_public(fileset)
            owners = set().union(*(dataset_owners(e) for e in fileset.values()))
            for account in self._users(owners):
                try:
                    self._write_user(fileset, account)
                except OSError as e:
                    problems.append(f"the catalog of {account.pw_name} was not updated: {e}")
        return problems

    def write_for(self, catalog: DatasetCatalog, account: pwd.struct_passwd) -> Path:
        """Write ``account``'s export (as its notebook server starts); its path."""
        with self._locked():
            return self._write_user(catalog.export_fileset(), account)

    def _write_public(self, fileset: dict) -> None:
        self.public_file.parent.chmod(PASSABLE_FOLDER)  # servers open it by its name
        write_file(self.public_file, json.dumps(readable_by(fileset, None), indent=1), 0o644)

    def _write_user(self, fileset: dict, account: pwd.struct_passwd) -> Path:
        text = json.dumps(readable_by(fileset, account.pw_name), indent=1) + "\n"
        with UserFolder(account) as folder:
            return folder.write(EXPORT_NAME, text)

    def _users(self, owners: set[str]) -> Iterable[pwd.struct_passwd]:
        """The accounts with an export already, and the owners of private datasets."""
        accounts = pwd.getpwall() if os.geteuid() == 0 else [pwd.getpwuid(os.geteuid())]
        for account in accounts:
            export = Path(account.pw_dir) / USER_FOLDER / EXPORT_NAME
            if account.pw_name in owners or _exists(export):
                yield account


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def facility_catalog(paths: FacilityPaths) -> DatasetCatalog:
    """The facility's catalog, whose every committed change rewrites its exports."""
    return DatasetCatalog(paths.database, on_change=CatalogExports(paths).refresh)
