"""What a notebook on the facility uses: its Dask cluster, the datasets, and running analyses.

In a JupyterLab spawned by casa's hub, everything is configured from the environment the
hub set: the gateway (``DASK_GATEWAY__*``), the user's tokens (``BEARER_TOKEN_FILE``,
``CASA_GATEWAY_TOKEN_FILE``) and the catalog (``CASA_CATALOG``)::

    from casa import connect, fileset, run
    client = connect(workers=2)
    result = run("dimuon", "demo", client)
"""

from __future__ import annotations

import json
import os
from typing import Any


def connect(workers: int | None = 2, adapt: tuple[int, int] | None = None):
    """A ``distributed.Client`` on your Dask Gateway cluster (your running one, or a new one).

    The same cluster ``casa run --cluster gateway`` finds and reuses; ``workers`` scales it,
    ``adapt=(MIN, MAX)`` lets it adapt instead, ``workers=None`` leaves it as it is.
    """
    from dask_gateway import Gateway

    from casa.compute.base import Scaling
    from casa.compute.gateway import apply_scaling, find_or_create_cluster
    from casa.workarounds import safe_gateway_close

    safe_gateway_close()
    cluster = find_or_create_cluster(Gateway())  # the hub's environment configures it
    if adapt is not None:
        apply_scaling(cluster, Scaling(minimum=adapt[0], maximum=adapt[1]))
    elif workers is not None:
        apply_scaling(cluster, Scaling(workers=workers))
    client = cluster.get_client()
    if workers:
        client.wait_for_workers(workers if adapt is None else max(adapt[0], 1), timeout=120)
    return client


def datasets() -> dict:
    """The facility's datasets you may read, as a coffea fileset with their metadata.

    ``{name: {"files": {url: {"object_path": tree, "num_entries": n, "uuid": u}},
    "metadata": {...}}}``, as ``casa datasets export`` writes it (a file's ``steps`` when a
    fileset gave them, ``"schema"`` when the dataset has a default schema).
    """
    path = os.environ.get("CASA_CATALOG")
    if not path:
        raise RuntimeError("CASA_CATALOG is not set: this is not a notebook started by casa's hub")
    with open(path) as f:
        return json.load(f)


def fileset(name: str) -> dict:
    """One dataset as a coffea fileset with its metadata: ``{name: datasets()[name]}``.

    It is what coffea's ``preprocess`` and ``apply_to_fileset`` take; give coffea's
    ``Runner`` ``treename=`` with it (its files map each URL to an object, not a tree name).
    """
    all_sets = datasets()
    if name not in all_sets:
        raise KeyError(f"no dataset {name!r}; there are: {', '.join(all_sets) or 'none'}")
    entry = all_sets[name]
    return {name: {**entry, "metadata": entry.get("metadata") or {}}}


def uproot_options() -> dict:
    """Nothing any more (``{}``), kept so that notebooks written for older casa still run.

    uproot, coffea, ``xrdcp`` and ROOT read the facility's ``root://`` URLs by themselves:
    XRootD's client presents the token it finds by WLCG discovery (the hub sets
    ``$BEARER_TOKEN_FILE``) through the servers' ``ztn`` protocol.
    """
    return {}


def run(
    analysis: str | Any,
    dataset: str,
    client,
    chunksize: int = 200_000,
    *,
    schema: str | type | None = None,
    treename: str | None = None,
):
    """Run an analysis on a dataset with coffea's Runner on ``client``; returns coffea's output.

    ``analysis`` is a processor instance (a ``ProcessorABC`` or a function of the events) or
    a name ``casa run`` takes (a built-in, ``path/to/file.py:NAME``). ``schema`` is a coffea
    schema class or a name ``casa run --schema`` takes (default: the dataset's, else
    NanoAODSchema); ``treename`` reads that tree in every file instead of the catalog's.
    The dataset's metadata reaches the processor in ``events.metadata``. Named by its file,
    an analysis has its folder importable here and on the workers, as ``casa run`` has.
    """
    from coffea import processor

    from casa.analysis.registry import load_processor
    from casa.analysis.schemas import resolve_schema
    from casa.compute.on_dask import analysis_code_on
    from casa.data.sources import uproot_options_for

    proc = load_processor(analysis) if isinstance(analysis, str) else analysis
    entry = fileset(dataset)[dataset]
    if schema is None:
        schema = entry.get("schema")
    # coffea's Runner takes each file's tree name where the export has an object per file.
    trees = {
        url: treename or (spec["object_path"] if isinstance(spec, dict) else spec)
        for url, spec in entry["files"].items()
    }
    from casa.compute.on_dask import RunClient

    runner = processor.Runner(
        # RunClient: the processor on every worker, so that the chunks use them all.
        executor=processor.DaskExecutor(client=RunClient(client), status=False),
        schema=resolve_schema(schema),
        chunksize=chunksize,
    )
    # casa's own reader, as casa run's: the token in each request's URL, so that workers'
    # renewed tokens apply to connections opened with older ones.
    options = uproot_options_for(list(trees))
    files = {dataset: {"files": trees, "metadata": entry.get("metadata") or {}}}
    with analysis_code_on(client, proc):  # a file's folder goes to the workers with it
        return runner(files, proc, uproot_options=options)
