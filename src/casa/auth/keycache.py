"""Give XRootD's SciTokens plugin the facility's public key without an HTTPS round trip.

libscitokens looks up an issuer's keys in a SQLite key cache
(``$XDG_CACHE_HOME/scitokens/scitokens_cpp.sqllite``, table ``keycache``: the issuer and
a JSON document ``{"jwks": ..., "next_update": t, "expires": t}``) before it would fetch
them from the issuer's web server. casa writes the facility's key there, with update and
expiry times far ahead, so the XRootD servers verify tokens offline.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

KEYCACHE_FILE = Path("scitokens") / "scitokens_cpp.sqllite"
#: How long the preloaded key stays valid in the cache; ``casa up`` writes it again each time.
KEY_VALIDITY_SECONDS = 10 * 365 * 24 * 3600


def preload_issuer_keys(cache_home: Path, issuer: str, jwks: dict) -> Path:
    """Store ``jwks`` for ``issuer`` in the key cache under ``cache_home``; return the file."""
    path = cache_home / KEYCACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    until = int(time.time()) + KEY_VALIDITY_SECONDS
    document = json.dumps({"jwks": jwks, "next_update": until, "expires": until})
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS keycache ("
            "issuer text UNIQUE PRIMARY KEY NOT NULL, keys text NOT NULL)"
        )
        db.execute("INSERT OR REPLACE INTO keycache VALUES (?, ?)", (issuer, document))
    return path
