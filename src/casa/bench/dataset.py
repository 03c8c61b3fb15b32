"""The bench's dataset: generated once into ``OUT/data`` and reused while it matches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casa.data.files import FileInfo, inspect_root_file
from casa.generate.generator import ensure_generated

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
    layout: str = "adl"

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
            "layout": self.layout,
            "seed": self.seed,
            "bytes": self.bytes,
            "paths": self.paths,
            "reused": self.reused,
            "generate_seconds": self.generate_seconds,
        }


def ensure_dataset(
    folder: Path,
    events: int,
    files: int,
    codec: str,
    seed: int,
    *,
    progress: Callable[[int], None] | None = None,
    layout: str = "adl",
) -> BenchDataset:
    """The dataset in ``folder``: reused if its manifest matches, generated (again) if not."""
    started = time.perf_counter()
    paths, reused = ensure_generated(
        folder, events, files, seed, codec, progress=progress, layout=layout
    )
    seconds = 0.0 if reused else time.perf_counter() - started
    infos = [inspect_root_file(p, TREE) for p in paths]
    return BenchDataset(infos, events, codec, seed, reused, seconds, layout)
