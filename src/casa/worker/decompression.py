"""Dask workers decompress ZLIB baskets with the fastest library installed
(:func:`casa.data.codecs.use_fastest_zlib`)."""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

from casa.data.codecs import use_fastest_zlib


class FastestZlib(WorkerPlugin):
    """Worker plugin: :func:`use_fastest_zlib` in every worker, once."""

    name = "casa-fastest-zlib"
    idempotent = True

    def setup(self, worker: Any) -> None:
        """Switch the worker's ZLIB library; ``self.library`` names it."""
        self.library = use_fastest_zlib()


def worker_zlib_libraries(client: Any) -> dict[str, str]:
    """Per worker: the library uproot decompresses ZLIB with there."""
    from casa.data.codecs import zlib_library

    return client.run(zlib_library)
