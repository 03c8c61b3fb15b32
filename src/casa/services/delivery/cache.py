"""The shared cache of results: one input file's output for one query, for every user.

A result's key is the SHA-256 of the code generator, the query (as canonical JSON), the
output format, the input file's URL and its identity (size and modification time, read
with the asking user's own token). A request whose every key is cached completes without
transforming anything; a user who may not read an input file never gets its key, since
the identity is read as that user. A file that changed has a new identity, so a new key;
its old entries are dropped the first time the new identity is seen. The cache is bounded
by ``delivery.cache_size``: the least recently used entries go first.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from casa.services.delivery.records import CacheEntry, DeliveryRecords
from casa.worker.skim import FORMATS


def result_key(codegen: str, query: list[dict], result_format: str, url: str,
               identity: str) -> str:  # fmt: skip
    """The cache key of one input file's result."""
    canonical = json.dumps([codegen, query, result_format, url, identity], sort_keys=True,
                           separators=(",", ":"))  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResultCache:
    """Result files in ``folder``, their entries in the delivery records."""

    def __init__(self, folder: Path, records: DeliveryRecords, limit: int):
        self.folder = Path(folder)
        self.records = records
        self.limit = limit
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def path(self, key: str, result_format: str) -> Path:
        return self.folder / f"{key}{FORMATS[result_format]}"

    def lookup(self, key: str, result_format: str) -> tuple[Path, CacheEntry] | None:
        """The cached result of ``key`` (marked as used now), or None."""
        entry = self.records.cached(key)
        path = self.path(key, result_format)
        if entry is None or not path.is_file():
            if entry is not None:
                self.records.forget(key)
            return None
        self.records.touch(key, time.time())
        return path, entry

    def store(self, key: str, result_format: str, data: bytes, url: str, identity: str,
              events: int, evict: bool = True) -> Path:  # fmt: skip
        """Keep ``data`` as the result of ``key``; then, unless ``evict`` is false, bring the
        cache within its bound (a result larger than the bound is not kept)."""
        for old in self.records.entries_of(url):
            if old.identity != identity:  # the file changed: its old results are stale
                self._drop(old.key)
        path = self.path(key, result_format)
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_bytes(data)
        os.replace(partial, path)
        self.records.remember(CacheEntry(key, url, identity, len(data), events, 0.0),
                              time.time())  # fmt: skip
        if evict:
            self.evict()
        return path

    def evict(self) -> list[str]:
        """Drop the least recently used entries until the cache holds at most its limit."""
        entries = self.records.entries()
        total = sum(e.size for e in entries)
        dropped = []
        for entry in entries:
            if total <= self.limit:
                break
            self._drop(entry.key)
            total -= entry.size
            dropped.append(entry.key)
        return dropped

    def _drop(self, key: str) -> None:
        for suffix in FORMATS.values():
            (self.folder / f"{key}{suffix}").unlink(missing_ok=True)
        self.records.forget(key)

    def size(self) -> int:
        return sum(e.size for e in self.records.entries())
