"""The decompression limit: the least time any engine can take to get a query's data.

For one query that is the time to read and decompress exactly the baskets of exactly the
branches the casa processor reads (:data:`QUERY_BRANCHES`), with the files' own codec, on W
processes, without building a single array. The baskets are found from each branch's
metadata (``fBasketSeek``, ``fBasketBytes``, ``fWriteBasket``), split across the processes,
and every process reads its baskets' bytes itself at their offsets (``os.pread``), parses
ROOT's compression block headers and decompresses each block with the codec's library, the
way ``uproot.compression`` does (ZLIB with the fastest library installed, as casa's readers
do: :func:`casa.data.codecs.use_fastest_zlib`; lzma, and cramjam's lz4 and zstd; LZ4 blocks
have their xxhash64 checksum verified, as uproot and ROOT do).

Process start-up is excluded: the pool is started and every process has imported the
codecs before the clock starts. By default the files' basket ranges are also read once,
untimed, so that the measurement finds them in the page cache like the engines it is
compared with (which run right after the data are generated or read): the limit is that of
decompression, not of the disk.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from casa.data.codecs import use_fastest_zlib
from casa.errors import DataError, UsageError

_MUON = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]

#: The branches each query's casa processor reads on the generated (ADL benchmark) layout,
#: as coffea's access log reports them (``savemetrics`` columns).
QUERY_BRANCHES: dict[str, list[str]] = {
    "dimuon": _MUON,
    "adl1": ["MET_pt"],
    "adl2": ["nJet", "Jet_pt"],
    "adl3": ["nJet", "Jet_pt", "Jet_eta"],
    "adl4": ["nJet", "Jet_pt", "MET_pt"],
    "adl5": [*_MUON, "MET_pt"],
    "adl6": ["nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btag"],
    "adl7": [
        *("nJet", "Jet_pt", "Jet_eta", "Jet_phi"),
        *("nMuon", "Muon_pt", "Muon_eta", "Muon_phi"),
        *("nElectron", "Electron_pt", "Electron_eta", "Electron_phi"),
    ],
    "adl8": [
        *_MUON,
        *("nElectron", "Electron_pt", "Electron_eta", "Electron_phi", "Electron_mass"),
        *("Electron_charge", "MET_pt", "MET_phi"),
    ],
}

# Branches of the generated layout that other NanoAOD files may name differently, with the
# alternatives the processors fall back to (objects.missing_et and objects.btag_field).
_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "MET_pt": ("PFMET_pt",),
    "MET_phi": ("PFMET_phi",),
    "Jet_btag": ("Jet_btagDeepFlavB", "Jet_btagDeepB"),
}

# TKey header: fNbytes (int32), fVersion (int16), fObjlen (int32), fDatime (uint32),
# fKeylen (int16), all big-endian.
_KEY_HEADER = struct.Struct(">ihiIh")
_BLOCK_HEADER = 9  # 2-byte algorithm, method, 3-byte compressed and uncompressed sizes
_LZ4_CHECKSUM = 8  # an xxhash64 of the block precedes LZ4 data, counted in its size


@dataclass
class ReadLimitResult:
    """One measurement of the decompression limit of a query."""

    #: Events in the files.
    events: int
    #: Time for all processes to read and decompress their baskets (start-up excluded).
    wall_seconds: float
    #: Decompressed bytes: the sum of the baskets' ``fObjlen`` (data and entry offsets).
    uncompressed_bytes: int
    #: Bytes read from the files: the sum of ``fBasketBytes`` (TKey headers included).
    compressed_bytes: int
    query: str = ""
    workers: int = 1
    baskets: int = 0
    #: The library that decompressed ZLIB baskets (:func:`casa.data.codecs.use_fastest_zlib`).
    zlib_library: str = "zlib"

    @property
    def events_per_second(self) -> float:
        """Events over the wall time."""
        return self.events / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        """Decompressed megabytes (10^6 bytes) per second."""
        return self.uncompressed_bytes / 1e6 / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class Basket:
    """Where one basket lies in a file."""

    path: str
    seek: int
    nbytes: int


def branches_for(query: str, available: Sequence[str] | None = None) -> list[str]:
    """The branches ``query`` reads; with ``available``, MET and b-tag as the processors pick them.

    On the generated layout this is ``QUERY_BRANCHES[query]``; a file without ``MET_*`` or
    ``Jet_btag`` gets ``PFMET_*`` or ``Jet_btagDeepFlavB``/``Jet_btagDeepB``, like the processors.
    """
    if query == "challenge" and available is not None:  # the wide-file query (bench.wide)
        from casa.generate.wide import challenge_branches

        return challenge_branches(available)
    if query not in QUERY_BRANCHES:
        raise UsageError(f"unknown query {query!r}: choose one of {', '.join(QUERY_BRANCHES)}")
    names = list(QUERY_BRANCHES[query])
    if available is None:
        return names
    present = set(available)
    out = []
    for name in names:
        if name not in present:
            name = next((alt for alt in _ALTERNATIVES.get(name, ()) if alt in present), name)
        out.append(name)
    return out


def plan_baskets(
    query: str, files: Sequence[str], tree: str = "Events"
) -> tuple[list[Basket], int, list[str]]:
    """The baskets of the query's branches in ``files``, the files' events, and the branches."""
    import uproot

    baskets: list[Basket] = []
    events = 0
    branches: list[str] = []
    for path in files:
        if "://" in str(path):
            raise UsageError(
                f"{path}: the read limit reads local files only (raw reads at basket offsets)"
            )
        try:
            with uproot.open(path) as f:
                t = f[tree]
                branches = branches_for(query, list(t.keys()))
                missing = [name for name in branches if name not in t]
                if missing:
                    raise DataError(f"{path} has no branch {', '.join(missing)} for {query}")
                events += int(t.num_entries)
                for name in branches:
                    branch = t[name]
                    n = int(branch.member("fWriteBasket"))
                    seeks = branch.member("fBasketSeek")[:n]
                    sizes = branch.member("fBasketBytes")[:n]
                    baskets.extend(
                        Basket(str(path), int(s), int(b))
                        for s, b in zip(seeks, sizes, strict=True)
                        if b > 0
                    )
        except (DataError, UsageError):
            raise
        except Exception as e:  # uproot raises many kinds on a missing or damaged file
            raise DataError(f"{path}: cannot read tree {tree!r} ({e})") from e
    return baskets, events, branches


def split_baskets(baskets: Sequence[Basket], workers: int) -> list[list[Basket]]:
    """Share the baskets among ``workers`` with nearly equal bytes (largest first, least loaded).

    Each share is sorted by file and offset, so every process reads its file forwards.
    """
    shares: list[list[Basket]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for basket in sorted(baskets, key=lambda b: (-b.nbytes, b.path, b.seek)):
        i = loads.index(min(loads))
        shares[i].append(basket)
        loads[i] += basket.nbytes
    return [sorted(share, key=lambda b: (b.path, b.seek)) for share in shares]


def _decompressors() -> dict[bytes, object]:
    """uproot's decompressors by the 2-byte algorithm tag of ROOT's block header."""
    from uproot import compression

    return {
        b"ZL": compression.ZLIB(1),
        b"XZ": compression.LZMA(1),
        b"L4": compression.LZ4(1),
        b"ZS": compression.ZSTD(1),
    }


_CODECS: dict[bytes, object] = {}


def _blocks(raw: bytes) -> tuple[int, list]:
    """The basket's ``fObjlen`` and its content decompressed block by block (buffers)."""
    if not _CODECS:
        _CODECS.update(_decompressors())
    nbytes, _version, objlen, _datime, keylen = _KEY_HEADER.unpack_from(raw)
    payload = memoryview(raw)[keylen:nbytes]
    if len(payload) == objlen:  # stored uncompressed
        return objlen, [payload]
    blocks = []
    at = 0
    while at < len(payload):
        header = payload[at : at + _BLOCK_HEADER]
        algo = bytes(header[:2])
        compressed = header[3] | header[4] << 8 | header[5] << 16
        uncompressed = header[6] | header[7] << 8 | header[8] << 16
        start, stop = at + _BLOCK_HEADER, at + _BLOCK_HEADER + compressed
        codec = _CODECS.get(algo)
        if codec is None:
            raise DataError(f"unsupported ROOT compression algorithm {algo!r}")
        if algo == b"L4":
            import xxhash

            expected = int.from_bytes(payload[start : start + _LZ4_CHECKSUM], "big")
            data = payload[start + _LZ4_CHECKSUM : stop]
            if xxhash.xxh64(data).intdigest() != expected:
                raise DataError("an LZ4 block's checksum does not match its data")
        else:
            data = payload[start:stop]
        block = codec.decompress(data, uncompressed)  # type: ignore[attr-defined]
        if len(block) != uncompressed:
            raise DataError(f"a block decompressed to {len(block)} bytes, not {uncompressed}")
        blocks.append(block)
        at = stop
    if sum(len(b) for b in blocks) != objlen:
        raise DataError(f"a basket decompressed to other than its {objlen} bytes")
    return objlen, blocks


def decompress_basket(raw: bytes) -> bytes:
    """The decompressed content (data and offsets, ``fObjlen`` bytes) of one basket's bytes.

    ``raw`` is the basket as stored: its TKey header followed by ROOT compression blocks, or
    by the content itself when compression did not make it smaller.
    """
    _, blocks = _blocks(raw)
    return b"".join(bytes(block) for block in blocks)


def _read_share(share: Sequence[Basket]) -> tuple[int, int]:
    """Read and decompress one process's baskets: (decompressed bytes, bytes read)."""
    fds: dict[str, int] = {}
    uncompressed = compressed = 0
    try:
        for basket in share:
            fd = fds.get(basket.path)
            if fd is None:
                fd = fds[basket.path] = os.open(basket.path, os.O_RDONLY)
            raw = os.pread(fd, basket.nbytes, basket.seek)
            if len(raw) != basket.nbytes:
                raise DataError(f"{basket.path} ends inside a basket at {basket.seek}")
            uncompressed += _blocks(raw)[0]
            compressed += len(raw)
    finally:
        for fd in fds.values():
            os.close(fd)
    return uncompressed, compressed


def _warm(seconds: float) -> tuple[int, str]:
    """Import the codecs in a worker, hold it a moment so others start too: its pid and the
    ZLIB library it decompresses with (the fastest installed, as casa's readers use)."""
    import xxhash  # noqa: F401

    library = use_fastest_zlib()
    if not _CODECS:
        _CODECS.update(_decompressors())
    time.sleep(seconds)
    return os.getpid(), library


def _touch(baskets: Sequence[Basket]) -> None:
    """Read every basket once so the measurement finds them in the page cache."""
    fds: dict[str, int] = {}
    try:
        for basket in baskets:
            fd = fds.get(basket.path)
            if fd is None:
                fd = fds[basket.path] = os.open(basket.path, os.O_RDONLY)
            os.pread(fd, basket.nbytes, basket.seek)
    finally:
        for fd in fds.values():
            os.close(fd)


def measure_read_limit(
    query: str,
    files: Sequence[str | Path],
    workers: int,
    *,
    tree: str = "Events",
    warm_cache: bool = True,
    repeat: int = 1,
) -> ReadLimitResult:
    """Time reading and decompressing the query's baskets in ``files`` on ``workers`` processes.

    With ``repeat`` > 1 the same pool does it that many times and the fastest time is kept.
    """
    if workers < 1:
        raise UsageError(f"workers must be at least 1 (got {workers})")
    if repeat < 1:
        raise UsageError(f"repeat must be at least 1 (got {repeat})")
    if not files:
        raise UsageError("give the read limit at least one file")
    baskets, events, _ = plan_baskets(query, [str(f) for f in files], tree)
    shares = split_baskets(baskets, workers)
    if warm_cache:
        _touch(baskets)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # Start every process and import the codecs in each before the clock starts.
        seen: dict[int, str] = {}
        for _ in range(20):
            seen.update(pool.map(_warm, [0.1] * workers))
            if len(seen) >= workers:
                break
        wall = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            futures = [pool.submit(_read_share, share) for share in shares if share]
            results = [f.result() for f in futures]
            wall = min(wall, time.perf_counter() - started)
    return ReadLimitResult(
        events=events,
        wall_seconds=wall,
        uncompressed_bytes=sum(u for u, _ in results),
        compressed_bytes=sum(c for _, c in results),
        query=query,
        workers=workers,
        baskets=len(baskets),
        zlib_library=", ".join(sorted(set(seen.values()))),
    )
