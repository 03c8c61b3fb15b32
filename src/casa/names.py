"""The facility's namespace: how users, datasets and their storage paths and scopes are spelled.

Every check of a user's, a dataset's or a storage folder's name is here, one function per kind
of name, each saying why its rule is what it is. (``facility.name`` is checked with the rest of
casa.toml, in :mod:`casa.config.load`: casa.config sits beside this module in the layers.)

Public data live in ``/store/data/DATASET~/``, a user's own in ``/store/user/NAME~/DATASET~/``.
Every folder named for a user or a dataset ends in :data:`NAME_END`, a character no name may
hold: Debian's XRootD 5.5.3 grants a token's scope to every path that merely starts with it
(``/store/user/ann`` would read ``/store/user/anna/...``; fixed upstream in xrootd PR #2152),
so no scope path casa mints may be a string prefix of another name's paths.
:func:`storage_path` is the one place that turns a path a person writes into this spelling;
storage, the issuer, tokens and the catalog all take it from here.
"""

from __future__ import annotations

import re

from casa.errors import UsageError

#: The tree a dataset's files are read from unless told otherwise (NanoAOD's).
DEFAULT_TREE = "Events"

#: Ends every storage folder named for a user or a dataset (never part of a name).
NAME_END = "~"

#: How many name components follow each namespace: ``data/DATASET``, ``user/NAME/DATASET``.
NAMED_LEVELS = {"data": 1, "user": 2}

#: What a user or dataset name may hold in storage.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: A facility user: a Unix account's name that is also a storage folder's.
_USER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

_URL_PATH = re.compile(r"^(root://[^/]+/)(/?store/.*)$")


def check_user_name(name: str) -> str:
    """``name`` if it can name a facility user; UsageError in one sentence if not.

    A facility user is a Unix account (``casa user add`` creates it with ``useradd``, and
    each user's notebook server and clusters run under it), the ``sub`` of their tokens and
    the folder ``/store/user/NAME~``. The rule is the one valid for all three: what
    ``useradd`` accepts by default (1-32 characters, lower-case letters, digits, '-' and
    '_', starting with a letter), in ASCII as storage folders are. The issuer mints for
    any account whose area can be a storage folder (:func:`check_storage_name`): a site's
    own accounts, which OpenID Connect logs in, may be spelled ``first.last``.
    """
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise UsageError(
            f"user name {name!r} is not valid: use 1-32 lower-case letters, digits, '-' or '_', "
            "starting with a letter"
        )
    return name


def check_facility_name(name: str) -> str:
    """``name`` if it can name the facility; UsageError in one sentence if not.

    The name is every token's audience (and ``NAME-gateway`` the gateway tokens'), and the
    last part of the issuer's URL, so it holds letters, digits, '-' and '_' only.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UsageError(f"facility.name = {name!r} may hold only letters, digits, '-' and '_'")
    return name


def check_dataset_name(name: str) -> str:
    """``name`` if it can name a dataset in the catalog; UsageError in one sentence if not.

    A dataset stored in the facility is the folder ``/store/data/NAME~`` (or in a user's
    area), so a dataset's name follows the storage folders' rule
    (:func:`check_storage_name`) even for datasets registered where their files lie: any
    of them may be stored later under the same name. The catalog once also took non-ASCII
    letters and a leading '-'; the two rules are now this one, the stricter.
    """
    if not isinstance(name, str) or not _NAME_CHARS.fullmatch(name):
        raise UsageError(
            f"dataset name {name!r} is not valid: use letters, digits, '-', '_' and '.', "
            "starting with a letter, digit or '_'"
        )
    return name


def check_storage_name(name: str, what: str = "dataset name") -> str:
    """``name`` if it can name a storage folder; UsageError in one sentence if not.

    XRootD serves these folders and checks tokens' scopes against their paths: a name is
    one path component (no '/'), begins with a letter, digit or '_' (no '..', no hidden
    folder), never holds :data:`NAME_END` (which closes it), and is ASCII so that the path
    a scope names is the path XRootD compares, byte for byte.
    """
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
