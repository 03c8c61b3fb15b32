"""The dataset catalog: named lists of files with their tree, events and bytes, in SQLite.

Every change happens in one transaction after all its files were checked, so a failed
command leaves the catalog as it was. A catalog made by an older casa gains the columns
added since (:data:`ADDED_COLUMNS`) when it is opened; its datasets are kept.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ForeignKey, String, create_engine, event, select
from sqlalchemy import inspect as inspect_database
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from casa.config import private_database
from casa.data.files import FileInfo, expand_paths, inspect_root_file
from casa.errors import DataError, UsageError
from casa.names import DEFAULT_TREE, check_dataset_name

#: Names coffea sets in ``events.metadata`` itself, which a dataset's metadata may not use
#: (coffea's Runner refuses them too: ``coffea.processor.executor._PROTECTED_NAMES``, coffea
#: 2026.9; ``tests/data/test_fileset_metadata.py`` checks the two agree).
RESERVED_METADATA = frozenset(
    {"dataset", "filename", "treename", "metadata", "entrystart", "entrystop", "fileuuid",
     "numentries", "uuid", "clusters", "preload"}
)  # fmt: skip

#: What a dataset's default schema may be spelled as: a coffea schema's class name,
#: ``module:Class`` or ``path/to/file.py:Class`` (``casa run`` resolves it).
_SCHEMA_SPELLING = re.compile(r"(?:[^:\s]+:)?[A-Za-z_][A-Za-z0-9_]*")


class _Base(DeclarativeBase):
    pass


#: Columns added to the first catalog's tables, by table: a catalog made before them gains
#: them (NULL in its rows) when it is opened.
ADDED_COLUMNS = {"datasets": ("schema",), "files": ("uuid", "steps_json")}


class _DatasetRow(_Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime.datetime]
    metadata_json: Mapped[str] = mapped_column(default="{}")
    schema_name: Mapped[str | None] = mapped_column("schema", String(500), default=None)
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
    uuid: Mapped[str | None] = mapped_column(String(36), default=None)
    steps_json: Mapped[str | None] = mapped_column(default=None)
    dataset: Mapped[_DatasetRow] = relationship(back_populates="files")


@dataclass(frozen=True)
class Dataset:
    """A named dataset as the catalog holds it.

    ``metadata`` is coffea's fileset metadata (JSON values; runs put it in
    ``events.metadata``); ``schema`` the coffea schema runs use unless told otherwise
    (a class name, ``module:Class`` or ``file.py:Class``; None when unset).
    """

    name: str
    created: datetime.datetime
    files: tuple[FileInfo, ...]
    metadata: dict = field(default_factory=dict)
    schema: str | None = None

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
            "schema": self.schema,
        }
        if with_files:
            out["files"] = [
                {"url": f.url, "tree": f.tree, "events": f.events, "bytes": f.bytes,
                 "uuid": f.uuid, **({"steps": _steps_list(f.steps)} if f.steps else {})}
                for f in self.files
            ]  # fmt: skip
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Dataset:
        """The dataset :meth:`to_dict` described (with its files)."""
        files = tuple(
            FileInfo(f["url"], f["tree"], f["events"], f["bytes"], f.get("uuid"),
                     tuple(map(tuple, f["steps"])) if f.get("steps") else None)
            for f in d["files"]
        )  # fmt: skip
        created = datetime.datetime.fromisoformat(d["created"])
        return cls(d["name"], created, files, d.get("metadata") or {}, d.get("schema"))

    def to_fileset_entry(self) -> dict:
        """This dataset in coffea's fileset format, with its metadata.

        ``files`` maps each URL to its ``object_path`` and ``num_entries``, its ``uuid``
        when the catalog knows it and its ``steps`` when a fileset gave them; ``schema``
        is there only when the dataset has a default schema (coffea ignores the key).
        """
        files = {}
        for f in self.files:
            spec: dict = {"object_path": f.tree, "num_entries": f.events}
            if f.uuid is not None:
                spec["uuid"] = f.uuid
            if f.steps is not None:
                spec["steps"] = _steps_list(f.steps)
            files[f.url] = spec
        entry = {"files": files, "metadata": json.loads(json.dumps(self.metadata))}
        if self.schema is not None:
            entry["schema"] = self.schema
        return entry


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
            _add_missing_columns(self._engine)
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
        schema: str | None = None,
        inspect: Callable[[Path, str], FileInfo] = inspect_root_file,
    ) -> Dataset:
        """Register local files (plain, globs, folders) as dataset ``name``, all or nothing."""
        check_dataset_name(name)
        metadata = check_metadata(name, metadata or {})
        schema = check_schema_name(schema)
        if not paths:
            raise UsageError("give at least one file, pattern or folder to add")
        files = [inspect(p, tree) for p in expand_paths(paths)]
        return self._insert([(name, files, metadata, schema)])[0]

    def add_files(
        self,
        name: str,
        files: list[FileInfo],
        metadata: dict | None = None,
        schema: str | None = None,
    ) -> Dataset:
        """Register already inspected files (for example copies in facility storage)."""
        check_dataset_name(name)
        metadata = check_metadata(name, metadata or {})
        return self._insert([(name, files, metadata, check_schema_name(schema))])[0]

    def remove(self, name: str) -> None:
        """Forget dataset ``name`` (its files are left where they are)."""
        with Session(self._engine) as s, s.begin():
            row = s.scalars(select(_DatasetRow).where(_DatasetRow.name == name)).first()
            if row is None:
                raise DataError(self._unknown(s, name))
            s.delete(row)
        self._changed()

    def _insert(
        self, items: Iterable[tuple[str, list[FileInfo], dict, str | None]]
    ) -> list[Dataset]:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
        try:
            with Session(self._engine, expire_on_commit=False) as s, s.begin():
                rows = []
                for name, files, metadata, schema in items:
                    if s.scalars(select(_DatasetRow.id).where(_DatasetRow.name == name)).first():
                        raise DataError(
                            f"a dataset named {name!r} exists already: choose another name, "
                            f"or remove it first with 'casa datasets remove {name}'"
                        )
                    if not files:
                        raise DataError(f"dataset {name!r} would hold no files")
                    row = _DatasetRow(
                        name=name, created=now, metadata_json=json.dumps(metadata),
                        schema_name=schema,
                    )  # fmt: skip
                    row.files = [
                        _FileRow(
                            position=i,
                            url=f.url,
                            tree=f.tree,
                            events=f.events,
                            bytes=f.bytes,
                            uuid=f.uuid,
                            steps_json=None if f.steps is None else json.dumps(f.steps),
                        )
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
        """Datasets (all, or those named) as a coffea fileset dictionary, with metadata."""
        chosen = self.list() if not names else [self.get(n) for n in names]
        return {d.name: d.to_fileset_entry() for d in chosen}

    def import_fileset(
        self,
        fileset: dict,
        *,
        schema: str | None = None,
        inspect: Callable[[Path | str, str], FileInfo] = inspect_root_file,
    ) -> list[Dataset]:
        """Register every dataset of a coffea fileset, checking each file; all or nothing.

        Every form coffea reads is taken: ``{name: [files]}``, ``{name: {"files": [files],
        "treename": T}}``, ``{name: {"files": {url: tree}}}`` and ``{url: {"object_path": T,
        "steps": ..., "num_entries": N, "uuid": U}}`` (coffea's preprocessed form), each
        with its ``metadata``. Files are local paths or ``root://`` URLs (read with the
        caller's token). ``num_entries`` and ``uuid``, when given, must be the file's own,
        and ``steps`` must lie inside it. A dataset's ``"schema"`` (what ``casa datasets
        export`` writes) is its default schema; ``schema`` is that of the datasets that name
        none.
        """
        if not isinstance(fileset, dict) or not fileset:
            raise DataError("a fileset is a JSON object mapping dataset names to their files")
        schema = check_schema_name(schema)
        planned = [_parse_dataset(name, spec, schema) for name, spec in fileset.items()]
        items = []
        for name, files, metadata, dataset_schema in planned:
            infos = [
                _checked_against(inspect(_file_location(url), tree), name, given)
                for url, tree, given in files
            ]
            items.append((name, infos, metadata, dataset_schema))
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


def check_metadata(dataset: str, metadata: object) -> dict:
    """A dataset's metadata as the catalog keeps it: a JSON object whose keys coffea leaves free.

    DataError naming the dataset if it is not an object, holds a value JSON cannot write
    (NaN included), or uses a name coffea sets in ``events.metadata`` itself.
    """
    if not isinstance(metadata, dict):
        raise DataError(
            f"the metadata of dataset {dataset!r} is {_json_kind(metadata)}, not an object: "
            'write it as "metadata": {"key": value, ...}'
        )
    if any(not isinstance(k, str) for k in metadata):
        raise DataError(f"the metadata keys of dataset {dataset!r} must be strings")
    reserved = sorted(RESERVED_METADATA & set(metadata))
    if reserved:
        raise DataError(
            f"the metadata of dataset {dataset!r} uses {', '.join(map(repr, reserved))}, which "
            "coffea sets in events.metadata itself: rename the key"
        )
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise DataError(
            f"the metadata of dataset {dataset!r} is not JSON ({e}): use strings, numbers, "
            "booleans, null, lists and objects"
        ) from None


def check_schema_name(schema: str | None) -> str | None:
    """``schema`` if it is spelled as a schema (a class name, ``module:Class``, ``file.py:Class``)."""
    if schema is None:
        return None
    if not isinstance(schema, str) or not _SCHEMA_SPELLING.fullmatch(schema) or len(schema) > 500:
        raise UsageError(
            f"schema {schema!r} is not a schema's name: give a coffea schema's class name "
            "(NanoAODSchema, BaseSchema, ...), module:Class or path/to/file.py:Class"
        )
    return schema


def _json_kind(value: object) -> str:
    """How JSON calls ``value``'s type, with an article (for error messages)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else f"a {type(value).__name__}"


def _parse_dataset(
    name: str, spec: object, default_schema: str | None
) -> tuple[str, list[tuple[str, str, dict]], dict, str | None]:
    """One fileset entry as (name, [(url, tree, given)], metadata, schema); nothing opened yet."""
    check_dataset_name(name)
    metadata: object = {}
    schema = default_schema
    tree = DEFAULT_TREE
    if isinstance(spec, list):
        files: object = spec
    elif isinstance(spec, dict) and "files" in spec:
        files = spec["files"]
        metadata = {} if spec.get("metadata") is None else spec["metadata"]
        if spec.get("schema") is not None:
            schema = check_schema_name(spec["schema"])
        tree = spec.get("treename") or DEFAULT_TREE
    else:
        raise DataError(
            f"dataset {name!r} in the fileset has no 'files': expected a list of files or "
            "{'files': {url: tree}}"
        )
    if isinstance(files, list) and all(isinstance(u, str) for u in files):
        files = dict.fromkeys(files)
    if not isinstance(files, dict) or not all(isinstance(u, str) for u in files):
        raise DataError(
            f"the files of dataset {name!r} are neither a list of paths nor an object mapping "
            "each path to its tree"
        )
    parsed = [(url, *_file_spec(name, url, each, tree)) for url, each in files.items()]
    return name, parsed, check_metadata(name, metadata), schema


def _file_spec(dataset: str, url: str, spec: object, tree: str) -> tuple[str, dict]:
    """A file's tree and what the fileset says of it (``steps``, ``num_entries``, ``uuid``)."""
    if spec is None or isinstance(spec, str):
        return spec or tree, {}
    if not isinstance(spec, dict):
        raise DataError(
            f"{url} in dataset {dataset!r}: expected its tree's name or an object with "
            "'object_path', not " + _json_kind(spec)
        )
    given: dict = {}
    if spec.get("num_entries") is not None:
        n = spec["num_entries"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DataError(f"{url} in dataset {dataset!r}: num_entries {n!r} is not a count")
        given["num_entries"] = n
    if spec.get("uuid") is not None:
        try:
            given["uuid"] = str(uuid.UUID(str(spec["uuid"])))
        except ValueError:
            raise DataError(
                f"{url} in dataset {dataset!r}: uuid {spec['uuid']!r} is not a UUID"
            ) from None
    if spec.get("steps") is not None:
        given["steps"] = _parse_steps(dataset, url, spec["steps"])
    return spec.get("object_path") or spec.get("treename") or tree, given


def _parse_steps(dataset: str, url: str, steps: object) -> tuple[tuple[int, int], ...]:
    """coffea's ``steps`` (``[[start, stop], ...]``) as sorted pairs that do not overlap."""

    def entry(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if (
        not isinstance(steps, list)
        or not steps
        or not all(
            isinstance(p, list) and len(p) == 2 and entry(p[0]) and entry(p[1]) and p[0] <= p[1]
            for p in steps
        )
    ):
        raise DataError(
            f"{url} in dataset {dataset!r}: steps must be a non-empty list of [start, stop] "
            "entry pairs with start <= stop"
        )
    pairs = tuple(sorted((p[0], p[1]) for p in steps))
    for (_, stop), (start, _) in zip(pairs, pairs[1:], strict=False):
        if start < stop:
            raise DataError(
                f"{url} in dataset {dataset!r}: its steps overlap at entry {start}, so some "
                "entries would be read twice"
            )
    return pairs


def _checked_against(info: FileInfo, dataset: str, given: dict) -> FileInfo:
    """``info`` (the file as inspected) with the fileset's steps; DataError if they disagree."""
    if given.get("num_entries", info.events) != info.events:
        raise DataError(
            f"{info.url} in dataset {dataset!r} has {info.events:,} entries in its tree "
            f"{info.tree}, the fileset says {given['num_entries']:,}: fix num_entries or "
            "preprocess the fileset again"
        )
    if "uuid" in given and info.uuid is not None and given["uuid"] != info.uuid:
        raise DataError(
            f"{info.url} in dataset {dataset!r} has the ROOT UUID {info.uuid}, the fileset "
            f"says {given['uuid']}: it is not the file the fileset was made from; preprocess "
            "the fileset again"
        )
    steps = given.get("steps")
    if steps and steps[-1][1] > info.events:
        raise DataError(
            f"{info.url} in dataset {dataset!r}: its steps reach entry {steps[-1][1]:,}, its "
            f"tree {info.tree} has {info.events:,} entries; preprocess the fileset again"
        )
    return FileInfo(info.url, info.tree, info.events, info.bytes, info.uuid, steps)


def _file_location(url: str) -> Path | str:
    """A fileset's file as inspection takes it: a ``root://`` URL, or an existing local path."""
    if url.startswith(("root://", "roots://")):
        return url
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise DataError(
            f"{url}: casa reads local files and root:// URLs; copy it here or give its root:// URL"
        )
    path = Path(url).expanduser()
    if not path.exists():
        raise DataError(f"{url}: no such file")
    return path.resolve()


def _steps_list(steps: tuple[tuple[int, int], ...]) -> list[list[int]]:
    return [list(p) for p in steps]


def _add_missing_columns(engine) -> None:
    """Give a catalog made by an older casa the columns of :data:`ADDED_COLUMNS` it lacks."""
    with engine.connect() as conn:
        for table, columns in ADDED_COLUMNS.items():
            have = {c["name"] for c in inspect_database(conn).get_columns(table)}
            for name in columns:
                if name in have:
                    continue
                column = _Base.metadata.tables[table].c[name]
                kind = column.type.compile(engine.dialect)
                try:
                    conn.exec_driver_sql(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')
                except OperationalError as e:
                    if "duplicate column" not in str(e.orig):  # another process added it
                        raise
        conn.commit()


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
        files=tuple(
            FileInfo(f.url, f.tree, f.events, f.bytes, f.uuid, _stored_steps(f.steps_json))
            for f in row.files
        ),
        metadata=json.loads(row.metadata_json or "{}"),
        schema=row.schema_name,
    )


def _stored_steps(text: str | None) -> tuple[tuple[int, int], ...] | None:
    return None if text is None else tuple((int(a), int(b)) for a, b in json.loads(text))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
