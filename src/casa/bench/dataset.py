"""The bench's dataset: generated once into ``OUT/data`` and reused while it matches."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casa.data.files import FileInfo, inspect_root_file
from casa.generate.generator import MANIFEST, generate_dataset

TREE = "Events"


@dataclass
class BenchDataset:
    """The generated files the engines read, and how they came to be."""

    files: list[FileInfo]
    events: int
    codec: str
    seed: int
    reused: bool
    generate_seconds: float

    @property
    def paths(self) -> list[str]:
        """The files' local paths."""
        return [f.url for f in self.files]

    @property
    def bytes(self) -> int:
        """The files' size on disk."""
        return sum(f.bytes for f in self.files)

    def to_json(self) -> dict:
        """JSON-ready description (paths, not contents)."""
        return {
            "events": self.events,
            "files": len(self.files),
            "codec": self.codec,
            "seed": self.seed,
            "bytes": self.bytes,
            "paths": self.paths,
            "reused": self.reused,
            "generate_seconds": self.generate_seconds,
        }


def manifest_matches(folder: Path, events: int, files: int, codec: str, seed: int) -> bool:
    """Whether ``folder/manifest.json`` describes exactly this dataset and its files exist."""
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    entries = found.get("files") or []
    return (
        found.get("events") == events
        and found.get("codec") == codec
        and found.get("seed") == seed
        and len(entries) == files
        and all(isinstance(e, dict) and (folder / e.get("name", "")).is_file() for e in entries)
    )


def ensure_dataset(
    folder: Path,
    events: int,
    files: int,
    codec: str,
    seed: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> BenchDataset:
    """The dataset in ``folder``: reused if its manifest matches, generated (again) if not."""
    folder = Path(folder)
    reused = manifest_matches(folder, events, files, codec, seed)
    seconds = 0.0
    if not reused:
        for old in folder.glob("*.root"):
            old.unlink()
        started = time.perf_counter()
        generate_dataset(folder, events, files, seed, codec, progress=progress)
        seconds = time.perf_counter() - started
    manifest = json.loads((folder / MANIFEST).read_text())
    infos = [inspect_root_file(folder / e["name"], TREE) for e in manifest["files"]]
    return BenchDataset(infos, events, codec, seed, reused, seconds)
