"""Where the facility keeps its state, and the settings every command shares.

The state directory is ``$CASA_HOME`` (default ``~/.local/share/casa``): the catalog
database lives there, and later the facility's ``casa.toml``, keys, logs and storage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("~/.local/share/casa")


@dataclass(frozen=True)
class FacilityPaths:
    """The files and folders under one facility state directory."""

    home: Path

    @property
    def database(self) -> Path:
        """The SQLite database holding the catalog (and later accounts and runs)."""
        return self.home / "casa.sqlite"

    def ensure(self) -> FacilityPaths:
        """Create the state directory (private to its owner) if it does not exist."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def facility_paths(home: str | os.PathLike | None = None) -> FacilityPaths:
    """Resolve the state directory: ``home`` if given, else ``$CASA_HOME``, else the default."""
    chosen = home or os.environ.get("CASA_HOME") or DEFAULT_HOME
    return FacilityPaths(Path(chosen).expanduser().resolve())
