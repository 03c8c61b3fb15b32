"""Which library decompresses ZLIB baskets: the fastest one that works here.

uproot decompresses ZLIB with Python's ``zlib`` unless told otherwise; it also takes ISA-L
(the ``isal`` package, a casa dependency) and libdeflate (``deflate``), which give the same
bytes faster. On the bench's files, one core: ISA-L 400-630 MB/s of output against
zlib's 270-510 MB/s (1.2-1.5x). :func:`use_fastest_zlib` switches the process that reads
files to the fastest one that decompresses a test stream correctly (uproot 5.7 calls
libdeflate with a keyword that deflate 0.7 and later refuse, so it is skipped there). casa
calls it wherever files are read: the run's own process, local worker processes, every
Dask worker (:class:`casa.worker.decompression.FastestZlib`), and the bench's
decompression limit, so the limit stays the least time any engine here can take.
"""

from __future__ import annotations

import abc
import importlib
import zlib

#: uproot's ZLIB libraries other than Python's own, fastest first.
FASTER_ZLIB_LIBRARIES: tuple[str, ...] = ("isal", "deflate")

#: The exception each library raises for data it cannot decompress: (module, class).
_ZLIB_ERRORS: tuple[tuple[str, str], ...] = (
    ("isal.isal_zlib", "IsalError"),
    ("deflate", "DeflateError"),
)

_PROBE = bytes(range(256)) * 64


def use_fastest_zlib() -> str:
    """Make uproot decompress ZLIB in this process with the fastest library that works.

    Returns the library's name (``"zlib"`` when no faster one works). uproot's reader is
    ``uproot.compression._decompress_ZLIB``, an instance of ``_DecompressZLIB`` whose class
    attribute ``library`` selects the library; setting it on ``uproot.ZLIB`` alone would
    change compression only.
    """
    from uproot import compression

    reader = compression._decompress_ZLIB
    probe = zlib.compress(_PROBE, 1)
    for library in FASTER_ZLIB_LIBRARIES:
        compression._DecompressZLIB.library = library
        try:
            if reader.decompress(probe, len(_PROBE)) == _PROBE:
                return library
        except Exception:  # not installed, or an interface this uproot does not match
            pass
    compression._DecompressZLIB.library = "zlib"
    return "zlib"


def zlib_library() -> str:
    """The library uproot decompresses ZLIB with in this process."""
    from uproot import compression

    return compression._decompress_ZLIB.library


class CorruptZlibData(abc.ABC):  # noqa: B024 - a virtual base: classes are registered, none derive
    """Stands for what any of the ZLIB libraries raises for data it cannot decompress
    (``zlib.error``, ISA-L's ``IsalError``, libdeflate's ``DeflateError``) in ``isinstance``
    checks, as coffea's ``skipbadfiles`` makes (not in ``except`` clauses: it is no
    exception class itself).

    One class named after this module, so that a tuple of errors holding it (coffea's
    ``skipbadfiles``) pickles by reference: ISA-L's class says it lives in a module
    ``igzip_lib`` that cannot be imported (isal 1.9), so a Dask scheduler passing such a
    tuple on would rebuild it as another class, which the worker's errors are not.
    """


for _module, _name in (("zlib", "error"), *_ZLIB_ERRORS):
    try:
        CorruptZlibData.register(getattr(importlib.import_module(_module), _name))
    except (ImportError, AttributeError):
        pass
