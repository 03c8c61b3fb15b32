"""The catalog as notebooks read it: coffea filesets rewritten whenever the catalog changes.

The database is private (it holds password hashes too), so users' notebooks read exports,
each what ``casa datasets export`` writes (the files, each dataset's metadata, its default
schema when it has one):

- ``services/hub/catalog.json`` (0644): the public datasets, for everyone;
- ``services/hub/catalogs/NAME.json`` (0600, NAME's): the public datasets and NAME's own
  private ones (those stored under ``/store/user/NAME~/``). ``casa.datasets()`` reads it
  (``$CASA_CATALOG``).

Both live in the facility's own folders (0711: passable, not listable), not in users'
homes: a user cannot plant a link where the facility writes, and two facilities on one
machine (a site's, and one a user runs for themselves) each keep their own users' exports.

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
from casa.data.catalog import Dataset, DatasetCatalog
from casa.errors import DataError
from casa.filesystem import PASSABLE_FOLDER, write_file
from casa.names import NAME_END, path_of_url

#: The public export, under ``services/hub/``.
EXPORT_NAME = "catalog.json"
#: The folder of the users' exports, under ``services/hub/``.
USERS_FOLDER = "catalogs"
#: The same datasets in full (each file's size, each dataset's creation time), as
#: ``casa datasets show --json`` gives them: what a facility user's ``casa`` reads
#: (:class:`ExportedCatalog`). The public one under ``services/hub/``, the users' in a folder
#: of USERS_FOLDER.
DETAILS_NAME = "datasets.json"
DETAILS_FOLDER = "details"


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
        self.public_details = paths.services / "hub" / DETAILS_NAME
        self.users_folder = paths.services / "hub" / USERS_FOLDER
        self.details_folder = self.users_folder / DETAILS_FOLDER

    def user_file(self, user: str) -> Path:
        """Where ``user``'s export is (what their notebook server's ``$CASA_CATALOG`` names)."""
        return self.users_folder / f"{user}.json"

    def user_details(self, user: str) -> Path:
        """Where ``user``'s datasets are described in full (:data:`DETAILS_NAME`)."""
        return self.details_folder / f"{user}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = self.public_file.parent
        for each in (self.paths.services, folder, self.users_folder, self.details_folder):
            each.mkdir(mode=PASSABLE_FOLDER, exist_ok=True)
            each.chmod(PASSABLE_FOLDER)  # servers open the files by name
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
            datasets = catalog.list()
            fileset = {d.name: d.to_fileset_entry() for d in datasets}
            self._write_public(datasets, fileset)
            owners = set().union(*(dataset_owners(e) for e in fileset.values()))
            for account in self._users(owners):
                try:
                    self._write_user(datasets, fileset, account)
                except OSError as e:
                    problems.append(f"the catalog of {account.pw_name} was not updated: {e}")
        return problems

    def write_for(self, catalog: DatasetCatalog, account: pwd.struct_passwd) -> Path:
        """Write ``account``'s export (as its notebook server starts); its path."""
        with self._locked():
            datasets = catalog.list()
            fileset = {d.name: d.to_fileset_entry() for d in datasets}
            return self._write_user(datasets, fileset, account)

    def _write_public(self, datasets: list[Dataset], fileset: dict) -> None:
        public = readable_by(fileset, None)
        write_file(self.public_file, json.dumps(public, indent=1), 0o644)
        write_file(self.public_details, _details(datasets, public), 0o644)

    def _write_user(
        self, datasets: list[Dataset], fileset: dict, account: pwd.struct_passwd
    ) -> Path:
        theirs = readable_by(fileset, account.pw_name)
        owner = (account.pw_uid, account.pw_gid) if os.geteuid() == 0 else None
        name = account.pw_name
        write_file(self.user_details(name), _details(datasets, theirs), 0o600, owner)
        return write_file(self.user_file(name), json.dumps(theirs, indent=1) + "\n", 0o600, owner)

    def _users(self, owners: set[str]) -> Iterable[pwd.struct_passwd]:
        """This facility's users with an export already, and the owners of private datasets
        (those with an account here: without root, the facility's one user)."""
        names = {p.stem for p in self.users_folder.glob("*.json")} | owners
        for name in sorted(names):
            try:
                account = pwd.getpwnam(name)
            except KeyError:
                continue
            if os.geteuid() == 0 or account.pw_uid == os.geteuid():
                yield account


def _details(datasets: list[Dataset], chosen: dict) -> str:
    return json.dumps([d.to_dict() for d in datasets if d.name in chosen], indent=1) + "\n"


class ExportedCatalog:
    """The catalog as one of the facility's users reads it, who may not open its database
    (it holds password hashes): the datasets they may read, from their export (written by
    every change, and when their notebook server starts), else the public one. Read only:
    changing the catalog is for the facility's admin (:mod:`casa.cli.access`)."""

    def __init__(self, paths: FacilityPaths, user: str):
        exports = CatalogExports(paths)
        own = exports.user_details(user)
        self.source = own if os.access(own, os.R_OK) else exports.public_details
        #: As :attr:`DatasetCatalog.warnings`: nothing changes here, so nothing to report.
        self.warnings: list[str] = []
        try:
            described = json.loads(self.source.read_text())
        except FileNotFoundError:
            raise DataError(
                f"the facility in {paths.home} has not published its catalog yet "
                f"({self.source} is missing): its admin publishes it with 'casa up'"
            ) from None
        except (OSError, ValueError) as e:
            raise DataError(f"the catalog export {self.source} cannot be read: {e}") from None
        self._datasets = {d["name"]: Dataset.from_dict(d) for d in described}

    def list(self) -> list[Dataset]:
        """The datasets this user may read, by name."""
        return [self._datasets[n] for n in sorted(self._datasets)]

    def get(self, name: str) -> Dataset:
        """The dataset called ``name``; DataError naming those there are."""
        if name not in self._datasets:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise DataError(
                f"no dataset named {name!r} among those you may read ({known}); the "
                "facility's admin adds datasets"
            )
        return self._datasets[name]

    def export_fileset(self, names: list[str] | None = None) -> dict:
        """As :meth:`DatasetCatalog.export_fileset`."""
        chosen = self.list() if not names else [self.get(n) for n in names]
        return {d.name: d.to_fileset_entry() for d in chosen}

    def close(self) -> None:
        """Nothing to release."""


def facility_catalog(paths: FacilityPaths) -> DatasetCatalog:
    """The facility's catalog, whose every committed change rewrites its exports."""
    return DatasetCatalog(paths.database, on_change=CatalogExports(paths).refresh)
