"""FuncADL queries (the ServiceX client's ``FuncADL_Uproot``), translated by func-adl-uproot.

The client sends the query as qastle text (``(call Select (call Where (call EventDataset
'bogus.root' 'Events') ...``) with the code generator ``uproot``. The delivery service only
parses it and translates it to Python source (:func:`check_func_adl`): it never runs it.
A task on the asking user's own cluster, under their account and token, runs that source
on one input file with dask-awkward: built lazily first (:func:`probe_func_adl`, which
finds an unknown tree or branch from the file's metadata alone), then computed on the
worker itself (:func:`run_func_adl`).

The result is one output tree, ``servicex``, as ServiceX names it: the fields of the
query's last ``Select`` (a dictionary of columns), or one column ``col1`` when it selects
a single value.
"""

from __future__ import annotations

from typing import Any

#: The key of a FuncADL query in casa's records (an Uproot-Raw query is a list).
QASTLE = "qastle"
#: The output tree of a FuncADL query.
OUTPUT_TREE = "servicex"


class FuncADLError(ValueError):
    """A FuncADL query that cannot run: one sentence naming what is wrong."""


def is_func_adl(query: Any) -> bool:
    return isinstance(query, dict) and QASTLE in query


def check_func_adl(text: Any) -> dict:
    """``{"qastle": text}`` when ``text`` parses and translates; FuncADLError else."""
    if not isinstance(text, str) or not text.strip():
        raise FuncADLError("a FuncADL query is qastle text (the client's FuncADL_Uproot)")
    _source(text)
    return {QASTLE: text}


def _source(text: str) -> str:
    """The Python source func-adl-uproot makes of ``text``, returning the lazy collection."""
    from func_adl_uproot import generate_python_source

    try:
        source = generate_python_source(text)
    except Exception as e:  # noqa: BLE001 - lark's and the translator's errors alike
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FuncADLError(f"the FuncADL query does not translate: {first}") from None
    if "uproot.dask(" not in source:
        raise FuncADLError("the FuncADL query reads no tree: start it with FromTree(NAME)")
    # func-adl-uproot ends the query with .compute(); the task computes it itself.
    head, tail = source.rsplit(".compute()", 1)
    return head + tail


def _collection(path: str, query: dict):
    """The query on the file at ``path`` as a dask-awkward collection (nothing read yet but
    the file's metadata)."""
    namespace: dict[str, Any] = {}
    exec(_source(query[QASTLE]), namespace)  # noqa: S102 - the user's own query, on their cluster
    try:
        return namespace["run_query"](input_filenames=[path])
    except OSError:  # the file itself: the caller says so
        raise
    except Exception as e:  # noqa: BLE001 - an unknown tree or branch, a bad operation
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FuncADLError(f"the FuncADL query fails on {path}: {first}") from None


def probe_func_adl(path: str, query: dict) -> None:
    """FuncADLError when ``query`` cannot run on the file at ``path``."""
    _collection(path, query)


def run_func_adl(path: str, query: dict) -> dict[str, Any]:
    """``{"servicex": awkward record array}``: the query computed on the file at ``path``."""
    import awkward as ak

    result = _collection(path, query).compute(scheduler="sync")  # here, not on the cluster
    if not result.fields:
        result = ak.zip({"col1": result}, depth_limit=1)
    return {OUTPUT_TREE: result}
