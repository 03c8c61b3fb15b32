"""``casa generate``: write synthetic NanoAOD-like ROOT files, reproducibly and in parallel."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import multiprocessing
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from casa.data.files import sha256_of
from casa.errors import UsageError
from casa.generate import physics, wide

#: Events per basket (one ``extend`` call writes one basket per branch).
BASKET_EVENTS = 50_000
#: The fixed timestamp written into generated files, so the same seed gives the same bytes.
FILE_TIMESTAMP = datetime.datetime(2012, 5, 1, 0, 0, 0)
CODECS = {"zlib": uproot.ZLIB, "lz4": uproot.LZ4, "zstd": uproot.ZSTD, "lzma": uproot.LZMA}
MANIFEST = "manifest.json"
FILE_PATTERN = "events_{index:04d}.root"
#: The run number of file 0; file i is run FIRST_RUN + i.
FIRST_RUN = 194_000
#: File layouts and the codec each uses when none is given: ``adl`` is the few dozen
#: branches of the ADL benchmark file, ``nanoaod-wide`` those plus the breadth of real
#: NanoAOD (casa.generate.wide).
DEFAULT_CODECS = {"adl": "zlib:1", wide.LAYOUT: wide.DEFAULT_CODEC}
LAYOUTS = tuple(DEFAULT_CODECS)


def check_layout(layout: str) -> str:
    """``layout`` if it is one of LAYOUTS, else a UsageError."""
    if layout not in DEFAULT_CODECS:
        raise UsageError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    return layout


def default_codec(layout: str = "adl") -> str:
    """The codec files of ``layout`` are written with when no codec is given."""
    return DEFAULT_CODECS[check_layout(layout)]


def parse_codec(spec: str) -> uproot.compression.Compression:
    """Turn ``"zlib:1"`` into an uproot compression setting, or raise a UsageError."""
    name, _, level = spec.partition(":")
    if name.lower() not in CODECS:
        raise UsageError(
            f"unknown codec {spec!r}: choose one of {', '.join(CODECS)} with a level, "
            "for example zlib:1, lz4:4, zstd:5 or lzma:9"
        )
    try:
        lvl = int(level) if level else 1
    except ValueError:
        raise UsageError(f"codec level in {spec!r} is not a whole number") from None
    if not 1 <= lvl <= 9:
        raise UsageError(f"codec level in {spec!r} must be between 1 and 9")
    return CODECS[name.lower()](lvl)


class _FrozenDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: ARG003 - signature of datetime.now
        return FILE_TIMESTAMP


@contextlib.contextmanager
def _frozen_write_clock() -> Iterator[None]:
    """Make uproot stamp files with FILE_TIMESTAMP instead of the wall clock."""
    import uproot.writing._cascade as cascade
    import uproot.writing._cascadetree as cascadetree
    import uproot.writing.writable as writable

    class _Shim:
        datetime = _FrozenDatetime

    modules = (cascade, cascadetree, writable)
    saved = [m.datetime for m in modules]
    for m in modules:
        m.datetime = _Shim
    try:
        yield
    finally:
        for m, d in zip(modules, saved, strict=True):
            m.datetime = d


def _branch_types(first: dict) -> dict:
    types = {}
    for name, value in first.items():
        if name in physics.COLLECTIONS or isinstance(value, ak.Array):
            types[name] = value.type.content  # the record type of one object, or var * dtype
        else:
            types[name] = value.dtype
    return types


def generate_file(
    path: Path,
    n_events: int,
    seed: int,
    codec: str | None = None,
    *,
    file_index: int = 0,
    progress: Callable[[int], None] | None = None,
    layout: str = "adl",
) -> dict:
    """Write one generated file and return its manifest entry (name, events, bytes, sha256).

    The content depends only on ``seed``, ``file_index``, ``n_events``, ``codec`` (by default
    the layout's, see DEFAULT_CODECS) and ``layout``.
    """
    path = Path(path)
    codec = codec or default_codec(layout)
    compression = parse_codec(codec)
    if isinstance(compression, uproot.ZLIB):
        # Stock zlib, whatever this process reads with: ZLIB's library is a class attribute
        # that casa.data.codecs.use_fastest_zlib sets for decompression, and it would change
        # these bytes too (the same seed must give the same file in any process).
        compression.library = "zlib"
    rng = np.random.default_rng(np.random.SeedSequence([seed, file_index]))
    # The UUID names the content (column caches key on it): files that differ in any input
    # that shapes their bytes get different UUIDs.
    name = f"casa:{seed}:{file_index}:{n_events}:{codec}"
    if layout != "adl":
        name += f":{layout}"
        # The extra branches draw from their own stream: the adl ones stay as in an adl file.
        wide_rng = np.random.default_rng(np.random.SeedSequence([seed, file_index, wide.STREAM]))
    file_uuid = uuid.UUID(bytes=hashlib.sha256(name.encode()).digest()[:16])
    first_event = 1
    run = FIRST_RUN + file_index
    # Written under its final name (ROOT records it) in a scratch folder, then moved in place.
    scratch = Path(tempfile.mkdtemp(prefix=".casa-generate-", dir=path.parent))
    tmp = scratch / path.name
    with (
        _frozen_write_clock(),
        uproot.recreate(tmp, compression=compression, uuid_function=lambda: file_uuid) as f,
    ):
        tree = None
        done = 0
        while done < n_events or tree is None:
            n = min(BASKET_EVENTS, n_events - done)
            block = physics.generate_events(rng, n, first_event + done, run)
            if layout != "adl":
                block = wide.widen(wide_rng, block)
            if tree is None:
                tree = f.mktree("Events", _branch_types(block), title="Events")
                # uproot writes no cluster ranges; an fAutoFlush equal to the basket size
                # lets ROOT see one cluster per basket instead of one per file.
                tree._cascading._metadata["fAutoFlush"] = BASKET_EVENTS
            if n:
                tree.extend(block)
            done += n
            if progress is not None and n:
                progress(n)
            if n_events == 0:
                break
    tmp.replace(path)
    scratch.rmdir()
    return {
        "name": path.name,
        "events": n_events,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
    }


def split_events(n_events: int, n_files: int) -> list[int]:
    """Spread ``n_events`` over ``n_files`` as evenly as possible."""
    base, extra = divmod(n_events, n_files)
    return [base + (1 if i < extra else 0) for i in range(n_files)]


def _file_job(args: tuple) -> dict:
    path, n, seed, codec, index, queue, layout = args

    def report(k: int) -> None:
        queue.put(k)

    return generate_file(
        Path(path), n, seed, codec, file_index=index, progress=report, layout=layout
    )


def generate_dataset(
    out: Path,
    n_events: int,
    n_files: int,
    seed: int,
    codec: str | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    layout: str = "adl",
) -> dict:
    """Write ``n_files`` files holding ``n_events`` in all into ``out``, plus ``manifest.json``.

    ``layout`` is ``adl`` or ``nanoaod-wide``; ``codec`` defaults to the layout's.
    """
    codec = codec or default_codec(layout)
    if n_events < 1:
        raise UsageError(f"--events must be at least 1 (got {n_events})")
    if n_files < 1:
        raise UsageError(f"--files must be at least 1 (got {n_files})")
    if n_files > n_events:
        raise UsageError(f"--files ({n_files}) cannot exceed --events ({n_events})")
    parse_codec(codec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    counts = split_events(n_events, n_files)
    workers = max(1, min(workers or os.cpu_count() or 1, n_files))
    entries: list[dict | None] = [None] * n_files
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        queue = manager.Queue()
        jobs = [
            (str(out / FILE_PATTERN.format(index=i)), counts[i], seed, codec, i, queue, layout)
            for i in range(n_files)
        ]
        if workers == 1:
            for i, job in enumerate(jobs):
                entries[i] = generate_file(
                    Path(job[0]),
                    counts[i],
                    seed,
                    codec,
                    file_index=i,
                    progress=progress,
                    layout=layout,
                )
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_file_job, job): i for i, job in enumerate(jobs)}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(queue, progress)
                    for f in done:
                        entries[futures[f]] = f.result()
                _drain(queue, progress)
    manifest = {
        "generator": "casa",
        "seed": seed,
        "codec": codec,
        "layout": layout,
        "events": n_events,
        "tree": "Events",
        "files": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _drain(queue, progress: Callable[[int], None] | None) -> None:
    while True:
        try:
            k = queue.get_nowait()
        except Exception:  # queue.Empty
            return
        if progress is not None:
            progress(k)


def manifest_matches(
    folder: Path,
    events: int,
    files: int,
    seed: int,
    codec: str | None = None,
    *,
    layout: str = "adl",
) -> bool:
    """Whether ``folder/manifest.json`` describes exactly this dataset and its files exist.

    A manifest without a layout (written before layouts existed) describes an ``adl`` one.
    """
    codec = codec or default_codec(layout)
    try:
        found = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    entries = found.get("files") or []
    return (
        found.get("events") == events
        and found.get("codec") == codec
        and found.get("seed") == seed
        and found.get("layout", "adl") == layout
        and len(entries) == files
        and all(
            isinstance(e, dict) and (Path(folder) / e.get("name", "")).is_file() for e in entries
        )
    )


def ensure_generated(
    folder: Path,
    n_events: int,
    n_files: int,
    seed: int,
    codec: str | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    layout: str = "adl",
) -> tuple[list[Path], bool]:
    """The dataset in ``folder``, reused while its manifest matches (layout included), else
    generated anew (its old files removed first); its files in order, and whether reused."""
    folder = Path(folder)
    codec = codec or default_codec(layout)
    reused = manifest_matches(folder, n_events, n_files, seed, codec, layout=layout)
    if not reused:
        for old in folder.glob("*.root"):
            old.unlink()
        generate_dataset(folder, n_events, n_files, seed, codec, progress=progress, layout=layout)
    manifest = json.loads((folder / MANIFEST).read_text())
    return [folder / e["name"] for e in manifest["files"]], reused
