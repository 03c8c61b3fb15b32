"""What the delivery service knows of its transforms, their files and its shared cache, in
SQLite (``services/delivery/delivery.sqlite``, readable by the facility's account only).

A transform belongs to the user whose token asked for it. Each of its input files is one
row, with its identity (size and modification time), its state (``waiting``, ``running``,
``done``, ``failed``), its attempts and its result object. A cache entry is one file's
result for one query, keyed by :func:`casa.services.delivery.cache.result_key`.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Boolean, Float, Integer, String, Text, create_engine, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from casa.config import private_database

#: A transform's states, as the ServiceX client names them.
SUBMITTED, RUNNING, COMPLETE, FATAL, CANCELED = (
    "Submitted", "Running", "Complete", "Fatal", "Canceled",
)  # fmt: skip
DONE_STATES = (COMPLETE, FATAL, CANCELED)
#: An input file's states.
WAITING, FILE_RUNNING, FILE_DONE, FILE_FAILED = "waiting", "running", "done", "failed"


class _Base(DeclarativeBase):
    pass


class _TransformRow(_Base):
    __tablename__ = "transforms"
    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    did: Mapped[str] = mapped_column(Text)
    selection: Mapped[str] = mapped_column(Text)
    codegen: Mapped[str] = mapped_column(String(64))
    result_format: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    submit_time: Mapped[float] = mapped_column(Float)
    finish_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    access_key: Mapped[str] = mapped_column(String(32), default="")
    secret_key: Mapped[str] = mapped_column(String(64), default="")
    from_cache: Mapped[int] = mapped_column(Integer, default=0)
    transformed: Mapped[int] = mapped_column(Integer, default=0)


class _FileRow(_Base):
    __tablename__ = "transform_files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), index=True)
    index: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    identity: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=WAITING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    object_name: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    events: Mapped[int] = mapped_column(Integer, default=0)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)


class _CacheRow(_Base):
    __tablename__ = "cache_entries"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text, index=True)
    identity: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    events: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[float] = mapped_column(Float)
    last_used: Mapped[float] = mapped_column(Float)


@dataclass
class InputFile:
    """One input file of a transform."""

    index: int
    url: str
    identity: str = ""
    state: str = WAITING
    attempts: int = 0
    reason: str = ""
    object_name: str = ""
    size: int = 0
    events: int = 0
    cached: bool = False
    finished: float | None = None


@dataclass
class Transform:
    """One transform request and where it stands."""

    request_id: str
    owner: str
    did: str
    selection: str
    codegen: str
    result_format: str
    status: str
    submit_time: float
    title: str = ""
    error: str = ""
    finish_time: float | None = None
    access_key: str = ""
    secret_key: str = ""
    files: list[InputFile] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(f.state == state for f in self.files)

    @property
    def query(self) -> list[dict] | dict:
        """The query: an Uproot-Raw list, or ``{"qastle": ...}`` for FuncADL."""
        return json.loads(self.selection)


@dataclass(frozen=True)
class CacheEntry:
    key: str
    url: str
    identity: str
    size: int
    events: int
    last_used: float


class DeliveryRecords:
    """The delivery service's SQLite database."""

    def __init__(self, path: Path):
        self._engine = create_engine(private_database(path))
        _Base.metadata.create_all(self._engine)

    # -- transforms -------------------------------------------------------------------
    def add(self, t: Transform) -> None:
        with Session(self._engine) as s, s.begin():
            s.add(_TransformRow(
                request_id=t.request_id, owner=t.owner, title=t.title, did=t.did,
                selection=t.selection, codegen=t.codegen, result_format=t.result_format,
                status=t.status, error=t.error, submit_time=t.submit_time,
                access_key=t.access_key, secret_key=t.secret_key,
            ))  # fmt: skip
            for f in t.files:
                s.add(_FileRow(request_id=t.request_id, index=f.index, url=f.url))

    def get(self, request_id: str) -> Transform | None:
        with Session(self._engine) as s:
            row = s.get(_TransformRow, request_id)
            if row is None:
                return None
            files = s.scalars(select(_FileRow).where(_FileRow.request_id == request_id)
                              .order_by(_FileRow.index)).all()  # fmt: skip
            return _transform(row, files)

    def of_owner(self, owner: str) -> list[Transform]:
        with Session(self._engine) as s:
            ids = s.scalars(select(_TransformRow.request_id).where(_TransformRow.owner == owner)
                            .order_by(_TransformRow.submit_time)).all()  # fmt: skip
        return [t for t in (self.get(i) for i in ids) if t is not None]

    def unfinished(self) -> list[Transform]:
        with Session(self._engine) as s:
            ids = s.scalars(select(_TransformRow.request_id)
                            .where(_TransformRow.status.not_in(DONE_STATES))).all()  # fmt: skip
        return [t for t in (self.get(i) for i in ids) if t is not None]

    def set_status(self, request_id: str, status: str, error: str = "") -> None:
        import time

        with Session(self._engine) as s, s.begin():
            row = s.get(_TransformRow, request_id)
            if row is None or row.status in DONE_STATES:
                return
            row.status = status
            if error:
                row.error = error
            if status in DONE_STATES:
                row.finish_time = time.time()

    def count_work(self, request_id: str, transformed: int = 0, from_cache: int = 0) -> None:
        with Session(self._engine) as s, s.begin():
            row = s.get(_TransformRow, request_id)
            if row is not None:
                row.transformed += transformed
                row.from_cache += from_cache

    def work_counts(self, request_id: str) -> tuple[int, int]:
        """``(files transformed, files served from the shared cache)``."""
        with Session(self._engine) as s:
            row = s.get(_TransformRow, request_id)
            return (row.transformed, row.from_cache) if row is not None else (0, 0)

    def delete(self, request_id: str) -> None:
        with Session(self._engine) as s, s.begin():
            s.execute(delete(_FileRow).where(_FileRow.request_id == request_id))
            s.execute(delete(_TransformRow).where(_TransformRow.request_id == request_id))

    def update_file(self, request_id: str, index: int, **values) -> None:
        with Session(self._engine) as s, s.begin():
            row = s.scalars(select(_FileRow).where(_FileRow.request_id == request_id,
                                                   _FileRow.index == index)).first()  # fmt: skip
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    # -- the shared cache -------------------------------------------------------------
    def cached(self, key: str) -> CacheEntry | None:
        with Session(self._engine) as s:
            row = s.get(_CacheRow, key)
            return None if row is None else _entry(row)

    def touch(self, key: str, now: float) -> None:
        with Session(self._engine) as s, s.begin():
            row = s.get(_CacheRow, key)
            if row is not None:
                row.last_used = now

    def remember(self, entry: CacheEntry, now: float) -> None:
        with Session(self._engine) as s, s.begin():
            s.merge(_CacheRow(key=entry.key, url=entry.url, identity=entry.identity,
                              size=entry.size, events=entry.events, created=now,
                              last_used=now))  # fmt: skip

    def forget(self, key: str) -> None:
        with Session(self._engine) as s, s.begin():
            s.execute(delete(_CacheRow).where(_CacheRow.key == key))

    def entries(self) -> list[CacheEntry]:
        """Every cache entry, least recently used first."""
        with Session(self._engine) as s:
            rows = s.scalars(select(_CacheRow).order_by(_CacheRow.last_used)).all()
            return [_entry(r) for r in rows]

    def entries_of(self, url: str) -> list[CacheEntry]:
        with Session(self._engine) as s:
            return [_entry(r) for r in s.scalars(select(_CacheRow).where(_CacheRow.url == url))]


def _transform(row: _TransformRow, files) -> Transform:
    return Transform(
        request_id=row.request_id, owner=row.owner, did=row.did, selection=row.selection,
        codegen=row.codegen, result_format=row.result_format, status=row.status,
        submit_time=row.submit_time, title=row.title, error=row.error,
        finish_time=row.finish_time, access_key=row.access_key, secret_key=row.secret_key,
        files=[InputFile(index=f.index, url=f.url, identity=f.identity, state=f.state,
                         attempts=f.attempts, reason=f.reason, object_name=f.object_name,
                         size=f.size, events=f.events, cached=f.cached, finished=f.finished)
               for f in files],
    )  # fmt: skip


def _entry(row: _CacheRow) -> CacheEntry:
    return CacheEntry(row.key, row.url, row.identity, row.size, row.events, row.last_used)


def iso(seconds: float | None) -> str | None:
    """``seconds`` since the epoch as the ISO 8601 time the ServiceX client parses."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()
