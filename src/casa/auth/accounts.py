"""Facility accounts: names, hashed passwords and admin flags, beside the catalog in SQLite.

Each facility user is also a Unix account on this machine (their notebook server and files
belong to it). Where casa runs without root, the facility has exactly one user: the account
that runs it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import pwd
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from casa.config import private_database
from casa.errors import ServiceError, UsageError
from casa.names import check_user_name

# scrypt parameters (RFC 7914): about 50 ms and 16 MiB per check on a laptop.
_N, _R, _P = 2**14, 8, 1


class _Base(DeclarativeBase):
    pass


class _AccountRow(_Base):
    __tablename__ = "accounts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str]
    admin: Mapped[bool]
    created: Mapped[datetime.datetime]


@dataclass(frozen=True)
class Account:
    """A facility user."""

    name: str
    admin: bool
    created: datetime.datetime


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant time)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


class AccountStore:
    """Facility accounts in the facility's SQLite database."""

    def __init__(self, database: Path):
        self._engine = create_engine(private_database(database))
        _Base.metadata.create_all(self._engine)

    def add(self, name: str, password: str, admin: bool = False) -> Account:
        """Create a facility account; UsageError if it exists."""
        check_user_name(name)
        if len(password) < 8:
            raise UsageError("passwords need at least 8 characters")
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
        with Session(self._engine) as s, s.begin():
            if s.get(_AccountRow, name) is not None:
                raise UsageError(f"user {name!r} exists already ('casa user list' shows them)")
            s.add(_AccountRow(name=name, password_hash=hash_password(password), admin=admin,
                              created=now))  # fmt: skip
        return Account(name, admin, now)

    def remove(self, name: str) -> None:
        """Delete a facility account (the Unix account and its files stay)."""
        with Session(self._engine) as s, s.begin():
            row = s.get(_AccountRow, name)
            if row is None:
                raise UsageError(f"no user named {name!r} ('casa user list' shows them)")
            s.delete(row)

    def list(self) -> list[Account]:
        """All accounts, by name."""
        with Session(self._engine) as s:
            rows = s.scalars(select(_AccountRow).order_by(_AccountRow.name)).all()
            return [Account(r.name, r.admin, r.created) for r in rows]

    def get(self, name: str) -> Account | None:
        """One account, or None."""
        with Session(self._engine) as s:
            r = s.get(_AccountRow, name)
            return Account(r.name, r.admin, r.created) if r else None

    def verify(self, name: str, password: str) -> Account | None:
        """The account if ``password`` is right, else None."""
        with Session(self._engine) as s:
            r = s.get(_AccountRow, name)
            if r is None:
                check_password(password, hash_password("timing"))  # same cost either way
                return None
            if not check_password(password, r.password_hash):
                return None
            return Account(r.name, r.admin, r.created)


def ensure_unix_account(name: str) -> pwd.struct_passwd:
    """The Unix account ``name``, created (with a private home) if casa runs as root."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise ServiceError(
            f"there is no Unix account {name!r}, and casa is not root so cannot create one"
        )
    try:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", name],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except FileNotFoundError:
        raise ServiceError("useradd is missing: install Debian's passwd package") from None
    except subprocess.CalledProcessError as e:
        raise ServiceError(f"useradd {name} failed: {e.stderr.strip()}") from None
    account = pwd.getpwnam(name)
    os.chmod(account.pw_dir, 0o700)
    return account


def current_account() -> str:
    """The name of the account running casa."""
    return pwd.getpwuid(os.geteuid()).pw_name
