"""The S3 server's auth proxy: which folder and secret an access key opens.

``rclone serve s3 --auth-proxy`` runs this program the first time it meets an access key
(and again every few minutes while the key is in use), with ``{"user": ACCESS_KEY}`` on
standard input. It answers with the backend for that key: the one folder holding the
key's bucket, and the secret the request's signature is checked with. A key that is not
one of the store's gets no secret, which rclone refuses. Kept to the standard library and
:mod:`casa.services.s3.keys`: it starts once per new key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from casa.services.s3.keys import ObjectStore

#: The answer for a key the store does not know: no secret, so rclone refuses the request.
REFUSED = {"type": "local", "_root": "/nonexistent", "_secret_access_key": ""}


def answer(store: ObjectStore, request: dict) -> dict:
    """The backend configuration for the access key in ``request``."""
    key = store.lookup(str(request.get("user", "")))
    if key is None:
        return REFUSED
    return {
        "type": "local",
        "_root": str(store.buckets_dir / key.bucket),
        "_secret_access_key": key.secret_key,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="casa-s3-auth-proxy")
    parser.add_argument("--root", required=True, help="the object store's state folder")
    args = parser.parse_args()
    try:
        request = json.load(sys.stdin)
    except ValueError:
        request = {}
    json.dump(answer(ObjectStore(Path(args.root)), request if isinstance(request, dict) else {}),
              sys.stdout)  # fmt: skip


if __name__ == "__main__":
    main()
