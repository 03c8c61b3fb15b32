"""Plain-HTTP downloads of a transform's results, by signed URLs.

Newer ServiceX clients ask the server for file URLs (the ``generate_file_urls``
capability, ``POST /servicex/transformation/file-urls``) and download them over plain HTTP
instead of speaking S3. casa's URLs point at the delivery service itself and carry their
own proof, as an S3 store's presigned URLs do: the transform, the object, when the URL
expires, and an HMAC-SHA256 of those three under a key only the service holds
(``services/delivery/url.key``, 0600). Whoever holds a URL may fetch that one object until
it expires, with no token: give it to a tool that cannot send a bearer (``curl``, a
browser, a batch job's stage-in). The owner's bearer is checked when a URL is made.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import urllib.parse
from pathlib import Path

#: How long a download URL is good for, in seconds.
URL_LIFETIME = 3600


class UrlSigner:
    """Makes and checks the signed download URLs of the service at ``base``."""

    def __init__(self, key_file: Path, base: str):
        self.base = base.rstrip("/")
        self.key = self._key(Path(key_file))

    @staticmethod
    def _key(path: Path) -> bytes:
        try:
            return bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
            return key

    def signature(self, request_id: str, name: str, expires: int) -> str:
        message = f"{request_id}\n{name}\n{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def url(self, request_id: str, name: str, lifetime: int = URL_LIFETIME,
            now: float | None = None) -> tuple[str, int]:  # fmt: skip
        """The URL of object ``name`` of ``request_id``, and when it expires (epoch seconds)."""
        expires = int((time.time() if now is None else now) + lifetime)
        query = urllib.parse.urlencode(
            {"expires": expires, "signature": self.signature(request_id, name, expires)}
        )
        path = f"/casa/files/{urllib.parse.quote(request_id)}/{urllib.parse.quote(name)}"
        return f"{self.base}{path}?{query}", expires

    def problem(self, request_id: str, name: str, expires: str, signature: str,
                now: float | None = None) -> str | None:  # fmt: skip
        """Why this URL does not open its object, or None when it does."""
        try:
            until = int(expires)
        except ValueError:
            return "this download URL is not one the delivery service made (no expiry)"
        if not hmac.compare_digest(self.signature(request_id, name, until), signature):
            return "this download URL is not one the delivery service made (bad signature)"
        if until < (time.time() if now is None else now):
            return (
                "this download URL has expired: ask for new ones (the client's file URLs, "
                "POST /servicex/transformation/file-urls)"
            )
        return None
