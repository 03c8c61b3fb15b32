"""Session fixtures shared by the test suite: real CMS NanoAOD samples and a small generated file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

#: The NanoAOD TTree files taken from coffea's test samples (tree ``Events``).
COFFEA_SAMPLES: tuple[str, ...] = (
    "nano_dy.root",
    "nano_dimuon.root",
    "nano_tree.root",
    "nano_tt_v12.root",
    "nano_tt_v15.root",
)

# Fragments of pip's output that mean the package index could not be reached at all.
_UNREACHABLE = (
    "Could not fetch URL",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "ProxyError",
    "SSLError",
)


def _samples_cache(coffea_version: str) -> Path:
    """Where the samples of this coffea version are kept between runs."""
    root = os.environ.get("CASA_TEST_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "casa-tests"
    return base / f"coffea-{coffea_version}-samples"


def _download_sdist(coffea_version: str, into: Path) -> Path:
    """Fetch coffea's source distribution with pip; skip the test if the index is unreachable."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--retries",
        "2",
        "--timeout",
        "30",
        f"coffea=={coffea_version}",
        "-d",
        str(into),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    sdists = sorted(into.glob("coffea-*.tar.gz"))
    if result.returncode == 0 and sdists:
        return sdists[0]
    output = result.stdout + result.stderr
    if any(marker in output for marker in _UNREACHABLE):
        pytest.skip(
            f"pip cannot reach the package index to download coffea {coffea_version}'s "
            "source distribution (its test samples are the real NanoAOD files these tests use)"
        )
    pytest.fail(f"pip download of coffea=={coffea_version} failed:\n{output}", pytrace=False)


def _extract_samples(sdist: Path, coffea_version: str, into: Path) -> None:
    """Copy the ``COFFEA_SAMPLES`` out of coffea's sdist into ``into``."""
    prefix = f"coffea-{coffea_version}/tests/samples/"
    with tarfile.open(sdist, "r:gz") as archive:
        for name in COFFEA_SAMPLES:
            member = archive.extractfile(prefix + name)
            if member is None:
                raise FileNotFoundError(f"{prefix}{name} is not a regular file in {sdist.name}")
            with member, open(into / name, "wb") as out:
                shutil.copyfileobj(member, out)


@pytest.fixture(scope="session")
def coffea_samples() -> Path:
    """A directory with coffea's real CMS NanoAOD test samples (``COFFEA_SAMPLES``).

    They come from coffea's source distribution on the package index, downloaded once and
    kept in ``$CASA_TEST_CACHE/coffea-<version>-samples`` (default root ``~/.cache/casa-tests``).
    """
    coffea_version = version("coffea")
    cache = _samples_cache(coffea_version)
    if all((cache / name).is_file() for name in COFFEA_SAMPLES):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Build the cache in a sibling temporary directory and rename it into place, so an
    # interrupted download never leaves a half-filled cache behind.
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".coffea-samples-") as tmp:
        work = Path(tmp)
        sdist = _download_sdist(coffea_version, work / "sdist")
        staged = work / "samples"
        staged.mkdir()
        _extract_samples(sdist, coffea_version, staged)
        if cache.exists():
            shutil.rmtree(cache)  # an older, incomplete copy
        try:
            staged.rename(cache)
        except OSError:
            # Another test session finished the same download first.
            if not all((cache / name).is_file() for name in COFFEA_SAMPLES):
                raise
    return cache


@pytest.fixture(scope="session")
def small_nanoaod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 20 000-event file in the layout of the ADL benchmark file (seed 7)."""
    from casa.generate.generator import generate_file

    path = tmp_path_factory.mktemp("generated") / "small_nanoaod.root"
    generate_file(path, n_events=20000, seed=7)
    return path


#: The modules that take longest (the sums of their tests' times in 'make test --durations'
#: on a two-core machine), longest first. Started first, so that the two test processes end
#: together instead of one running a long module alone at the end (with
#: --no-loadscope-reorder, xdist takes modules in this order; see the Makefile).
LONGEST_FIRST = (
    "services/test_hub.py",
    "site/test_slurm_site.py",
    "services/test_gateway.py",
    "services/test_gateway_lifetimes.py",
    "services/test_delivery.py",
    "services/test_run_faults.py",
    "services/test_newcomer.py",
    "services/test_supervisor.py",
    "analysis/test_processors.py",
    "services/test_data_access.py",
    "services/test_attacker.py",
    "services/test_file_modes.py",
    "services/test_prefix_names.py",
    "cli/test_run.py",
    "bench/test_bench_smoke.py",
)


def pytest_collection_modifyitems(session, config, items):
    """The longest modules first (a stable sort: the rest keep their order)."""
    tests = Path(__file__).parent
    rank = {str(tests / name): i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))
