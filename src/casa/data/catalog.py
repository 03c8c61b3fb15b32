"""The dataset catalog: named lists of files with their tree, events and bytes, in SQLite.

Every change happens in one transaction after all its files were checked, so a failed
command leaves the catalog as it was.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ForeignKey, String, create_engine, event, select
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from casa.config import private_database
from casa.data.files import FileInfo, expand_paths, inspect_root_file
from casa.errors import DataError, UsageError
from casa.names import check_dataset_name

DEFAULT_TREE = "Events"


class _Base(DeclarativeBase):
    pass


class _DatasetRow(_Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime.datetime]
    metadata_json: Mapped[str] = mapped_column(default="{}")
    files: Mapped[list[_FileRow]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", order_by="_FileRow.position"
    )


class _FileRow(_Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int]
    url: Mapped[str]
    tree: Mapped[str]
    events: Mapped[int]
    bytes: Mapped[int]
    dataset: Mapped[_DatasetRow] = relationship(back_populates="files")


@dataclass(frozen=True)
class Dataset:
    """A named dataset as the catalog holds it."""

    name: str
    created: datetime.datetime
    files: tuple[FileInfo, ...]
    metadata: dict = field(default_factory=dict)

    @property
    def events(self) -> int:
        """Events in all files."""
        return sum(f.events for f in self.files)

    @property
    def bytes(self) -> int:
        """Bytes in all files."""
        return sum(f.bytes for f in self.files)

    def to_dict(self, with_files: bool = True) -> dict:
        """A JSON-ready description."""
        out = {
            "name": self.name,
            "created": self.created.isoformat(timespec="seconds"),
            "n_files": len(self.files),
            "events": self.events,
            "bytes": self.bytes,
            "metadata": self.metadata,
        }
        if with_files:
            out["files"] = [
                {"url": f.url, "tree": f.tree, "events": f.events, "bytes": f.bytes}
                for f in self.files
            ]
        return out

    def to_fileset_entry(self) -> dict:
        """This dataset in coffea's fileset format (``files`` maps each URL to its tree)."""
        return {
            "files": {f.url: {"object_path": f.tree, "num_entries": f.events} for f in self.files},
            "metadata": dict(self.metadata),
        }


class DatasetCatalog:
    """Named datasets in the facility's SQLite database."""

    def __init__(
        self, database: Path, on_change: Callable[[DatasetCatalog], list[str]] | None = None
    ):
        """Open (or create) the catalog in ``database``.

        ``on_change`` is called after every committed change with the catalog; it returns
        problems to report (one sentence each), which :attr:`warnings` collects.
        """
        _check_can_open(database)
        self._on_change = on_change
        #: What ``on_change`` reported since the catalog was opened.
        self.warnings: list[str] = []
        self._engine = create_engine(private_database(database))
        event.listen(self._engine, "connect", _sqlite_pragmas)
        try:
            _Base.metadata.create_all(self._engine)
        except DatabaseError as e:
            self._engine.dispose()
            raise DataError(
                f"the catalog {database} cannot be opened ({e.orig}): check that it is a casa "
                "catalog and that your account may read and write it"
            ) from None

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def _changed(self) -> None:
        if self._on_change is not None:
            self.warnings.extend(self._on_change(self))

    # -- reading --------------------------------------------------------------
    def list(self) -> list[Dataset]:
        """All datasets, by name."""
        with Session(self._engine) as s:
            rows = s.scalars(select(_DatasetRow).order_by(_DatasetRow.name)).all()
            return [_to_dataset(r) for r in rows]

    def get(self, name: str) -> Dataset:
        """The dataset called ``name``; DataError if there is none."""
        with Session(self._engine) as s:
            row = s.scalars(select(_DatasetRow).where(_DatasetRow.name == name)).first()
            if row is None:
                raise DataError(self._unknown(s, name))
            return _to_dataset(row)

    def _unknown(self, s: Session, name: str) -> str:
        names = s.scalars(select(_DatasetRow.name).order_by(_DatasetRow.name)).all()
        known = f"known datasets: {', '.join(names)}" if names else "the catalog is empty"
        return f"no dataset named {name!r} ({known}); add one with 'casa datasets add'"

    # -- changing -------------------------------------------------------------
    def add(
        self,
        name: str,
        paths: list[str],
        tree: str = DEFAULT_TREE,
        *,
        metadata: dict | None = None,
        inspect: Callable[[Path, str], FileInfo] = inspect_root_file,
    ) -> Dataset:
        """Register local files (plain, globs, folders) as dataset ``name``, all or nothing."""
        check_dataset_name(name)
        if not paths:
            raise UsageError("give at least one file, pattern or folder to add")
        files = [inspect(p, tree) for p in expand_paths(paths)]
        return self._insert([(name, files, metadata or {})])[0]

    def add_files(self, name: str, files: list[FileInfo], metadata: dict | None = None) -> Dataset:
        """Register already inspected files (for example copies in facility storage)."""
        check_dataset_name(name)
        return self._insert([(name, files, metadata or {})])[0]

    def remove(self, name: str) -> None:
        """Forget dataset ``name`` (its files are left where they are)."""
        with Session(self._engine) as s, s.begin():
            row = s.scalars(select(_DatasetRow).where(_DatasetRow.name == name)).first()
            if row is None:
                raise DataError(self._unknown(s, name))
            s.delete(row)
        self._changed()

    def _insert(self, items: Iterable[tuple[str, list[FileInfo], dict]]) -> list[Dataset]:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
        try:
            with Session(self._engine, expire_on_commit=False) as s, s.begin():
                rows = []
                for name, files, metadata in items:
                    if s.scalars(select(_DatasetRow.id).where(_DatasetRow.name == name)).first():
                        raise DataError(
                            f"a dataset named {name!r} exists already: choose another name, "
                            f"or remove it first with 'casa datasets remove {name}'"
                        )
                    if not files:
                        raise DataError(f"dataset {name!r} would hold no files")
                    row = _DatasetRow(name=name, created=now, metadata_json=json.dumps(metadata))
                    row.files = [
                        _FileRow(position=i, url=f.url, tree=f.tree, events=f.events, bytes=f.bytes)
                        for i, f in enumerate(files)
                    ]
                    s.add(row)
                    rows.append(row)
                s.flush()
                added = [_to_dataset(r) for r in rows]
        except IntegrityError as e:  # two datasets of one name inside a single import
            raise DataError(f"dataset names must be unique: {e.orig}") from None
        self._changed()
        return added

    # -- coffea filesets ------------------------------------------------------
    def export_fileset(self, names: list[str] | None = None) -> dict:
        """Datasets (all, or those named) as a coffea fileset dictionary."""
        chosen = self.list() if not names else [self.get(n) for n in names]
        return {d.name: d.to_fileset_entry() for d in chosen}

    def import_fileset(
        self,
        fileset: dict,
        *,
        inspect: Callable[[Path, str], FileInfo] = inspect_root_file,
    ) -> list[Dataset]:
        """Register every dataset of a coffea fileset, checking each file; all or nothing."""
        if not isinstance(fileset, dict) or not fileset:
            raise DataError("a fileset is a JSON object mapping dataset names to their files")
        items = []
        for name, spec in fileset.items():
            check_dataset_name(name)
            metadata = {}
            if isinstance(spec, list):
                files = {f: DEFAULT_TREE for f in spec}
            elif isinstance(spec, dict) and "files" in spec:
                files = spec["files"]
                metadata = spec.get("metadata") or {}
                if isinstance(files, list):
                    files = {f: spec.get("treename", DEFAULT_TREE) for f in files}
            else:
                raise DataError(
                    f"dataset {name!r} in the fileset has no 'files': expected a list of files or "
                    "{'files': {url: tree}}"
                )
            infos = []
            for url, tree_spec in files.items():
                if isinstance(tree_spec, dict):
                    tree = tree_spec.get("object_path") or tree_spec.get("treename") or DEFAULT_TREE
                else:
                    tree = tree_spec or DEFAULT_TREE
                infos.append(inspect(_local_path(url), tree))
            items.append((name, infos, metadata))
        return self._insert(items)

    def rewrite_urls(self, rewrite: Callable[[str], str]) -> int:
        """Replace every file URL by ``rewrite(url)`` in one transaction; how many changed."""
        changed = 0
        with Session(self._engine) as s, s.begin():
            for row in s.scalars(select(_FileRow)):
                new = rewrite(row.url)
                if new != row.url:
                    row.url = new
                    changed += 1
        if changed:
            self._changed()
        return changed


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise DataError(
            f"{url}: only local files can be imported so far; copy them here or give their path"
        )
    path = Path(url).expanduser()
    if not path.exists():
        raise DataError(f"{url}: no such file")
    return path.resolve()


def _check_can_open(database: Path) -> None:
    """DataError in one sentence when this account may not open the catalog (or create it)."""
    try:
        if database.exists():
            if not os.access(database, os.R_OK | os.W_OK):
                raise DataError(_refused_catalog(database))
            return
        folder = next(p for p in [database.parent, *database.parent.parents] if p.exists())
    except PermissionError:
        folder = database.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(
            f"cannot create the catalog {database}: your account may not write in {folder}; "
            "choose a facility folder of your own with --home or $CASA_HOME"
        )


def _refused_catalog(database: Path) -> str:
    info = database.stat()
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = f"uid {info.st_uid}"
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = f"uid {os.geteuid()}"
    listing = database.parent / "services" / "hub" / "catalog.json"
    see = f"; read the facility's datasets in {listing}" if os.access(listing, os.R_OK) else ""
    return (
        f"the catalog {database} is the facility's (owned by {owner}, mode "
        f"{info.st_mode & 0o777:04o}) and your account {me} may not open it: ask a facility "
        f"admin to add, change or export datasets{see}, or use a facility folder of your own "
        "with --home or $CASA_HOME"
    )


def _to_dataset(row: _DatasetRow) -> Dataset:
    return Dataset(
        name=row.name,
        created=row.created,
        files=tuple(FileInfo(f.url, f.tree, f.events, f.bytes) for f in row.files),
        metadata=json.loads(row.metadata_json or "{}"),
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
