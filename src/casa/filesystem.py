"""Files the facility writes: whole at once, with exact modes and owners, never through a link.

Every file casa writes for someone (a key, a token, a generated configuration, a user's
catalog) goes through :func:`write_file`, and every file it writes into a folder a user
owns (``~/.casa``) through :class:`UserFolder`. Both matter most under root: a user owns
their home, so whatever name root opens there may be a symbolic link the user planted to
``/etc/shadow``. So files are created under a fresh temporary name with ``O_EXCL |
O_NOFOLLOW`` (the call fails instead of following a link), their mode and owner are set on
the open file, and they are renamed into place (a rename replaces a link, it never writes
through one). The user's folder itself is opened with ``O_NOFOLLOW`` and checked to be
theirs before anything is written in it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path

#: The umask of ``casa up`` and of every service it starts: what a service writes is its
#: account's alone unless casa opens it up on purpose (see docs/facility.md).
PRIVATE_UMASK = 0o077
#: Folders other accounts may pass through to a file they know the name of, but not list.
PASSABLE_FOLDER = 0o711
#: The folder in each user's home where the hub puts their tokens.
USER_FOLDER = ".casa"

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the block with :data:`PRIVATE_UMASK`, then restore the caller's umask."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def _write_new(
    name: str | Path, data: bytes, mode: int, owner: tuple[int, int] | None,
    dir_fd: int | None = None,
) -> None:  # fmt: skip
    """Create ``name`` (which must not exist) holding ``data``, with ``mode`` and ``owner``."""
    fd = os.open(name, _CREATE, 0o600, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)


def _temporary_name(name: str) -> str:
    """A name beside ``name`` nobody can guess (in /tmp, another account could otherwise
    plant a file or a link there first)."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def write_file(
    path: Path, data: str | bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> Path:
    """Replace ``path`` at once with ``data``, with exactly ``mode`` and ``owner`` (uid, gid).

    The file never exists with other permissions, whatever the umask, and nothing is
    written through a symbolic link: it is created under a temporary name and renamed.
    """
    path = Path(path)
    tmp = path.with_name(_temporary_name(path.name))
    try:
        _write_new(tmp, data.encode() if isinstance(data, str) else data, mode, owner)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def create_once(path: Path, data: str | bytes, mode: int = 0o600) -> bool:
    """Write ``path`` unless it exists (the first of several writers wins); whether we did.

    Written whole under a temporary name and linked into place, so a reader never sees a
    half-written key, and two processes starting at once agree on one.
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = path.with_name(_temporary_name(path.name))
    try:
        _write_new(tmp, data.encode() if isinstance(data, str) else data, mode, None)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class UserFolder:
    """``~NAME/.casa``, opened safely for root (or the user) to write files in for the user.

    The folder is created (mode 0700, owned by the user) if missing. A ``.casa`` that is
    a symbolic link, not a folder, or another account's is refused with OSError: writing
    through it would let the user aim root at any file of the machine.
    """

    def __init__(self, account: pwd.struct_passwd, name: str = USER_FOLDER):
        self.account = account
        self.path = Path(account.pw_dir) / name
        self._owner = (account.pw_uid, account.pw_gid)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            raise OSError(
                f"{self.path} is not a folder (a link or a file?): remove it so that casa can "
                f"make it again ({e.strerror})"
            ) from None
        info = os.fstat(self._fd)
        if info.st_uid not in (account.pw_uid, os.geteuid()):
            os.close(self._fd)
            raise OSError(f"{self.path} belongs to uid {info.st_uid}, not to {account.pw_name}")
        os.fchown(self._fd, *self._owner)
        os.fchmod(self._fd, 0o700)

    def write(self, name: str, text: str, mode: int = 0o600) -> Path:
        """Replace the file ``name`` in the folder with ``text``, the user's with ``mode``."""
        tmp = _temporary_name(name)
        try:
            _write_new(tmp, text.encode(), mode, self._owner, dir_fd=self._fd)
            os.replace(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self._fd)
            raise
        return self.path / name

    def close(self) -> None:
        """Release the folder."""
        os.close(self._fd)

    def __enter__(self) -> UserFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
