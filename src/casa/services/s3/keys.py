"""The object store's buckets and keys, as files under ``services/s3``.

One bucket per delivery transform, and keys that open exactly one bucket each:

- ``buckets/NAME/NAME/``: the bucket's objects. The S3 server gives a key the folder
  ``buckets/NAME`` as its root, whose one folder is the one bucket the key sees.
- ``keys/ACCESS_KEY.json``: ``{"secret": ..., "bucket": NAME}``, mode 0600, read by
  :mod:`casa.services.s3.auth_proxy` when the S3 server meets that key.

Everything here belongs to the facility's account and is private to it (mode 0700): other
accounts reach a bucket only with its key, through the S3 server.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from casa.errors import UsageError

#: Bucket names: S3's own rule (3-63 of lower-case letters, digits, '-' and '.').
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: Access key IDs as the store makes them (and the only ones the proxy looks up).
ACCESS_KEY = re.compile(r"^CASA[A-Z0-9]{16}$")


@dataclass(frozen=True)
class BucketKey:
    """A key that reads one bucket."""

    access_key: str
    secret_key: str
    bucket: str


class ObjectStore:
    """The buckets and keys of the S3 server whose state folder is ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def buckets_dir(self) -> Path:
        return self.root / "buckets"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    def ensure(self) -> ObjectStore:
        """Create the folders of buckets and keys, private to the facility's account (the
        state folder itself is the supervisor's: other accounts pass through it to the PID
        file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.buckets_dir, self.keys_dir):
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o700)
        return self

    # -- buckets ----------------------------------------------------------------------
    def bucket_dir(self, bucket: str) -> Path:
        """The folder of ``bucket``'s objects (it need not exist yet)."""
        check_bucket_name(bucket)
        return self.buckets_dir / bucket / bucket

    def create_bucket(self, bucket: str) -> Path:
        """Create ``bucket`` (nothing happens if it exists) and return its folder."""
        folder = self.bucket_dir(bucket)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def objects(self, bucket: str) -> dict[str, int]:
        """``{object name: size}`` of ``bucket`` (empty when there is no such bucket)."""
        folder = self.bucket_dir(bucket)
        if not folder.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}

    def delete_bucket(self, bucket: str) -> None:
        """Remove ``bucket``, its objects and every key to it."""
        for key in self.keys_of(bucket):
            self.revoke(key)
        shutil.rmtree(self.buckets_dir / check_bucket_name(bucket), ignore_errors=True)

    # -- keys -------------------------------------------------------------------------
    def grant(self, bucket: str) -> BucketKey:
        """A new key that reads ``bucket`` and nothing else."""
        check_bucket_name(bucket)
        key = BucketKey(
            "CASA" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                             for _ in range(16)),
            secrets.token_urlsafe(30), bucket,
        )  # fmt: skip
        path = self.keys_dir / f"{key.access_key}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as f:
            json.dump({"secret": key.secret_key, "bucket": bucket}, f)
        return key

    def revoke(self, access_key: str) -> None:
        """Remove ``access_key`` (the S3 server forgets it within its proxy's cache time)."""
        if ACCESS_KEY.match(access_key):
            (self.keys_dir / f"{access_key}.json").unlink(missing_ok=True)

    def keys_of(self, bucket: str) -> list[str]:
        """The access keys that read ``bucket``."""
        found = []
        for path in self.keys_dir.glob("*.json"):
            try:
                if json.loads(path.read_text()).get("bucket") == bucket:
                    found.append(path.stem)
            except (OSError, ValueError):
                continue
        return found

    def lookup(self, access_key: str) -> BucketKey | None:
        """The key ``access_key``, or None when there is no such key."""
        if not ACCESS_KEY.match(access_key):
            return None
        try:
            record = json.loads((self.keys_dir / f"{access_key}.json").read_text())
        except (OSError, ValueError):
            return None
        bucket = record.get("bucket", "")
        if not BUCKET_NAME.match(bucket) or not record.get("secret"):
            return None
        return BucketKey(access_key, record["secret"], bucket)


def check_bucket_name(bucket: str) -> str:
    """``bucket`` if it is a valid bucket name; UsageError naming the rule otherwise."""
    if not isinstance(bucket, str) or not BUCKET_NAME.match(bucket) or ".." in bucket:
        raise UsageError(
            f"{bucket!r} cannot be a bucket name: use 3-63 lower-case letters, digits, '-' and '.'"
        )
    return bucket
