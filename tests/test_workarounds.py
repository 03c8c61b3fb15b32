"""Each workaround in casa.workarounds is still needed, and still works.

The first test of each pair shows the library's own behaviour and fails the day a release
changes it: then the workaround (and its entry in WORKAROUNDS) can go.
"""

from __future__ import annotations

import contextlib
import inspect
import io

import pytest

from casa.workarounds import WORKAROUNDS, quiet_coffea, safe_gateway_close


def _iterative_bar() -> str:
    from coffea.processor import executor
    from coffea.util import coffea_console

    shown = io.StringIO()
    saved = coffea_console.file
    coffea_console.file = shown
    try:
        executor.IterativeExecutor(status=False)([1, 2], lambda x: {"n": x}, {"n": 0})
    finally:
        coffea_console.file = saved
    return shown.getvalue()


def _futures_stderr() -> str:
    from coffea.processor import executor

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(ValueError):
        executor.FuturesExecutor(workers=1, status=False)(["x"], int, {})
    return err.getvalue()


def test_coffea_still_draws_and_prints_what_casa_hides():
    assert "Processing" in _iterative_bar(), "coffea now honours status=False"
    assert "Traceback" in _futures_stderr(), "coffea no longer prints a failed chunk's traceback"


def test_quiet_coffea_hides_them_and_restores_coffea_after():
    with quiet_coffea():
        assert _iterative_bar() == ""
        assert _futures_stderr() == ""
    assert "Processing" in _iterative_bar()


def _closed_twice() -> None:
    from dask_gateway import Gateway

    gateway = Gateway(address="http://127.0.0.1:9", auth="basic")  # no request is made
    gateway.close()
    gateway.close()


def test_dask_gateway_still_fails_on_a_second_close():
    """In a process of its own: once patched, a process stays patched."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        failure = pool.apply(_second_close_error)
    assert "RuntimeError" in failure, "dask-gateway's Gateway.close may now be called twice"


def _second_close_error() -> str:
    try:
        _closed_twice()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""


def test_safe_gateway_close_makes_a_second_close_harmless():
    safe_gateway_close()
    safe_gateway_close()  # patching twice changes nothing
    _closed_twice()


def test_dask_gateway_server_still_extends_paths_by_letters():
    from dask_gateway_server.backends.local import LocalBackend

    source = inspect.getsource(LocalBackend.setup_working_directory)
    assert "paths.extend(path)" in source, "dask-gateway-server fixed its paths.extend(path)"


def test_every_workaround_names_its_version_and_fix():
    assert len(WORKAROUNDS) >= 5
    for w in WORKAROUNDS:
        assert w.library and w.version[0].isdigit() and w.problem and "casa." in w.fix


def test_uproot_still_calls_deflate_with_bufsize_and_shares_one_library_attribute():
    """casa.data.codecs probes each ZLIB library because of the first; the generator writes
    with stock zlib because of the second."""
    from uproot import compression

    assert "deflate.zlib_decompress(data, bufsize=" in inspect.getsource(compression)
    assert "library" in vars(compression._DecompressZLIB), "ZLIB.library is one class attribute"
    assert "self.library" in inspect.getsource(compression.ZLIB.compress)


def test_owned_working_directory_hands_over_exactly_the_clusters_paths(tmp_path):
    """With dask-gateway-server's own path helpers, as FixedLocalBackend calls it."""
    import types

    from dask_gateway_server.backends.local import LocalBackend

    from casa.workarounds import owned_working_directory

    handed = []
    backend = types.SimpleNamespace(
        clusters_directory=str(tmp_path),
        set_file_permissions=lambda paths, user: handed.append((list(paths), user)),
    )
    for name in ("get_certs_directory", "get_logs_directory", "_get_tls_paths"):
        setattr(backend, name, types.MethodType(getattr(LocalBackend, name), backend))
    cluster = types.SimpleNamespace(name="c1", tls_cert=b"cert", tls_key=b"key", username="u")
    workdir = owned_working_directory(backend, cluster)
    ((paths, user),) = handed
    assert user == "u" and workdir == str(tmp_path / "c1")
    assert paths == [workdir, f"{workdir}/.certs", f"{workdir}/logs",
                     f"{workdir}/.certs/dask.crt", f"{workdir}/.certs/dask.pem"]  # fmt: skip
    assert (tmp_path / "c1" / ".certs" / "dask.pem").read_bytes() == b"key"


def _in_a_fresh_python(code: str) -> str:
    """What ``code`` prints, run by a new interpreter (its imports are its own)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout  # fmt: skip


def test_coffea_and_distributed_still_import_what_a_gateway_run_never_uses():
    from coffea.processor.executor import DaskExecutor

    assert "import dask.dataframe" in inspect.getsource(DaskExecutor.__call__), (
        "coffea's DaskExecutor no longer imports dask.dataframe at every call"
    )
    printed = _in_a_fresh_python(
        "import sys; from distributed.versions import get_versions; get_versions(); "
        "print('pandas' in sys.modules)"
    )
    assert printed.split() == ["True"], "distributed no longer imports pandas for its version"


def test_deferred_modules_run_only_when_used_and_then_are_the_real_ones():
    printed = _in_a_fresh_python("""
import sys
from casa.workarounds import defer_import
defer_import("pandas", "dask.dataframe", "no_such_module_here")
import dask.dataframe as dd
from distributed.versions import get_versions
reported = get_versions()["packages"]["pandas"]
print("dask.array" in sys.modules, "pandas.core" in sys.modules, "no_such_module_here" in sys.modules)
import importlib.metadata
print(reported == importlib.metadata.version("pandas"))
import pandas
frame = pandas.DataFrame({"a": [1, 2]})
print(int(frame.a.sum()), type(sys.modules["pandas"]).__name__)
print(len(dd.from_pandas(frame, npartitions=1).compute()), type(sys.modules["dask.dataframe"]).__name__)
from pandas.core.frame import DataFrame
print(DataFrame is pandas.DataFrame)
""")
    assert printed.split("\n")[:5] == [
        "False False False",  # imported, not run: nor an uninstalled module made up
        "True",  # its version reported without running it
        "3 module",  # the first use runs it, and the import system holds the real module
        "2 module",
        "True",  # its submodules are the real ones'
    ]
