"""Every workaround casa applies to a third-party library, in one place.

Each says what the library does, the version it was seen in, and the upstream report when
it is an upstream bug. ``tests/test_workarounds.py`` checks, for each, that the library
still behaves so: the day a release fixes it, that test fails, and the workaround goes.
:data:`WORKAROUNDS` lists them (docs/architecture.md shows the table).

Workarounds that are a choice of casa's rather than a patch (uproot's ZLIB class attribute
serves compression and decompression alike, so the generator writes with stock zlib; which
deflate library uproot can call: :mod:`casa.data.codecs`) stay with their code and are
listed here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Workaround:
    """One workaround: the library, its version, what goes wrong, and where casa fixes it."""

    library: str
    version: str
    problem: str
    fix: str
    upstream: str = "behaviour, not a reported bug"


WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        "coffea", "2026.9.0",
        "IterativeExecutor draws its progress bar even with status=False; FuturesExecutor "
        "prints a failed chunk's traceback to stderr before raising it",
        "casa.workarounds.quiet_coffea (used by casa.analysis.runner.run_analysis)",
    ),
    Workaround(
        "coffea, distributed", "2026.9.0, 2025.3.1",
        "DaskExecutor imports dask.dataframe (and dask.array with it) at every call, which "
        "only use_dataframes=True needs, and distributed's Client imports pandas to report "
        "its version: 0.5 s of a 2.5 s casa run on a warm cluster",
        "casa.workarounds.defer_import (in casa run's process): stand-in modules that run "
        "the first time something reads one of their attributes",
    ),
    Workaround(
        "dask-gateway", "2026.3.0 (with distributed 2025.x)",
        "Gateway.close a second time (its __del__ does) asks the stopped loop for its state "
        "and raises RuntimeError; a close from the gateways' own loop thread waits on that "
        "loop and hangs the process",
        "casa.workarounds.safe_gateway_close (casa.compute.gateway, casa.notebook)",
    ),
    Workaround(
        "dask-gateway-server", "2026.3.0 (and its main branch)",
        "LocalBackend.setup_working_directory does paths.extend(path) for the TLS files, "
        "adding one path per character, so set_file_permissions chowns the wrong paths",
        "casa.workarounds.owned_working_directory (FixedLocalBackend in "
        "casa.services.gateway.server)",
        "not reported yet (dask_gateway_server/backends/local.py)",
    ),
    Workaround(
        "uproot", "5.7.7",
        "calls deflate.zlib_decompress(..., bufsize=), which deflate 0.7 and later refuse",
        "casa.data.codecs tries each ZLIB library on a small stream and keeps the first "
        "that works",
    ),
    Workaround(
        "uproot", "5.7.7",
        "uproot.ZLIB.library is one class attribute for compression and decompression",
        "casa.generate.generator writes with stock zlib whatever the reader uses",
    ),
)  # fmt: skip


def _on_own_loop(obj) -> asyncio.AbstractEventLoop | None:
    """The running loop, if this is the (shared) event loop thread of ``obj``'s gateway."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if obj.asynchronous or running is not _loop_of(obj):
        return None
    return running


def _loop_of(obj) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop of ``obj``'s gateway; None once that loop has stopped (asking
    distributed for a stopped loop raises)."""
    try:
        return obj.loop.asyncio_loop
    except RuntimeError:
        return None


def safe_gateway_close() -> None:
    """Make ``Gateway.close`` safe to call twice, and both closes safe on the gateway's loop.

    dask-gateway 2026.3 closes its client again from ``__del__``; with distributed 2025.3
    the second close asks a stopped loop for its state and prints a RuntimeError on exit.
    And ``__del__`` (of a ``Gateway`` or a ``GatewayCluster``) runs wherever the garbage
    collector happens to run: on the event loop thread that all gateway clients of a
    process share, the close waited for that very loop and the process hung for good
    (seen in the test suite, once in a few runs). There, the closing coroutine is now
    started on the loop instead of waited for.
    """
    from dask_gateway import client

    if getattr(client.Gateway.close, "_casa_safe", False):
        return
    gateway_close = client.Gateway.close
    cluster_close = client.GatewayCluster.close

    def close_gateway(self):
        if getattr(self, "_casa_closed", False):
            return None
        self._casa_closed = True
        loop = _on_own_loop(self)
        if loop is not None:
            loop.create_task(self._cleanup())
            return None
        return gateway_close(self)

    def close_cluster(self, shutdown=None):
        if not self.asynchronous and _loop_of(self) is None:
            return None  # the loop is gone: nothing is left to close through it
        loop = _on_own_loop(self)
        if loop is not None and self.status != "closed":
            loop.create_task(self._stop_internal(shutdown=shutdown))
            return None
        return cluster_close(self, shutdown=shutdown)

    close_gateway._casa_safe = True
    client.Gateway.close = close_gateway
    client.GatewayCluster.close = close_cluster


@contextlib.contextmanager
def quiet_coffea() -> Iterator[None]:
    """Hide coffea's own progress bars and tracebacks: casa shows one bar with chunks and
    events, and a failed run's one sentence.

    (coffea's IterativeExecutor draws its bar even with ``status=False``, and its
    FuturesExecutor prints the traceback of a failed chunk to stderr before raising it:
    coffea 2026.9.)
    """
    import traceback
    import types

    from coffea.processor import executor as coffea_executor
    from coffea.util import coffea_console

    quiet, tracebacks = coffea_console.quiet, coffea_executor.traceback
    coffea_console.quiet = True
    coffea_executor.traceback = types.SimpleNamespace(
        **{name: getattr(traceback, name) for name in traceback.__all__ if name != "print_exc"},
        print_exc=lambda *args, **kwargs: None,
    )
    try:
        yield
    finally:
        coffea_console.quiet = quiet
        coffea_executor.traceback = tracebacks


class _DeferredModule(types.ModuleType):
    """A module not run yet: it runs when an attribute it lacks is first read."""

    def __getattr__(self, attr: str):
        return getattr(_run_deferred(self), attr)


_DEFERRING = threading.RLock()


def _run_deferred(proxy: _DeferredModule) -> types.ModuleType:
    """Run ``proxy``'s module for real (once), and return it."""
    name = proxy.__name__
    with _DEFERRING:
        if sys.modules.get(name) is proxy:
            del sys.modules[name]
            try:
                importlib.import_module(name)
            except BaseException:
                sys.modules[name] = proxy
                raise
        return sys.modules[name]


def defer_import(*names: str) -> None:
    """Make ``import NAME`` cost nothing until something reads one of its attributes; the
    module then runs, and every reader gets the real module's attributes.

    The stand-in carries what the import system and version reports read without using
    the module: ``__name__``, ``__spec__`` and ``__version__`` (from the installed
    distribution). For a one-shot process (casa run's), where a module imported but never
    used is never run. Nothing happens for a name imported already or not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        proxy = _DeferredModule(name)
        proxy.__spec__, proxy.__loader__ = spec, spec.loader
        proxy.__package__ = name if spec.submodule_search_locations else name.rpartition(".")[0]
        if "." not in name:
            with contextlib.suppress(PackageNotFoundError):
                proxy.__version__ = version(name)
        sys.modules[name] = proxy


def owned_working_directory(backend, cluster) -> str:
    """dask-gateway-server's ``LocalBackend.setup_working_directory``, with its bug fixed.

    The shipped code adds each TLS file with ``paths.extend(path)``, one entry per letter,
    so ``set_file_permissions`` is handed single characters instead of the two files.
    """
    import os
    import tempfile

    if backend.clusters_directory:
        workdir = os.path.join(backend.clusters_directory, cluster.name)
    else:
        workdir = tempfile.mkdtemp(prefix="dask", suffix=cluster.name)
    paths = [workdir, backend.get_certs_directory(workdir), backend.get_logs_directory(workdir)]
    for path in paths:
        os.makedirs(path, 0o700, exist_ok=True)
    cert_path, key_path = backend._get_tls_paths(workdir)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for path, data in [(cert_path, cluster.tls_cert), (key_path, cluster.tls_key)]:
        with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
            f.write(data)
        paths.append(path)
    backend.set_file_permissions(paths, cluster.username)
    return workdir
