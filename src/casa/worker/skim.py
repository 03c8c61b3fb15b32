"""What a delivery transform runs on a Dask worker: an Uproot-Raw query on one input file.

An Uproot-Raw query (the ServiceX client's ``UprootRaw``) is a list of subqueries, each
either a query on trees, with the meaning of uproot's ``TTree.arrays`` arguments::

    {"treename": "Events" | [...] | {"in": "out"}, "filter_name": ..., "filter_typename": ...,
     "cut": "...", "expressions": [...], "aliases": {...}}

or ``{"copy_histograms": name, glob, /regex/ or a list of them}``, which copies other
objects of the file. Cuts and expressions may use numpy's functions (as uproot's own
expression language does) and awkward's reducers (``count_nonzero``, ``sum``, ``num``,
...). The output is one file: a ROOT file with one tree per output tree name, or a
parquet file holding every tree, a ``treename`` column saying which. A FuncADL query
(``{"qastle": ...}``) runs as :mod:`casa.worker.func_adl_query` says.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from casa.worker.func_adl_query import FuncADLError, is_func_adl, probe_func_adl, run_func_adl

#: The output formats, by the name the ServiceX client sends (``result-format``).
FORMATS = {"root-file": ".root", "parquet": ".parquet"}
#: The keys a tree subquery may hold (others are ignored, as ServiceX does).
TREE_KEYS = ("treename", "filter_name", "filter_typename", "cut", "expressions", "aliases")
#: awkward's functions available in cuts and expressions, beside numpy's.
AWKWARD_FUNCTIONS = ("all", "any", "argmax", "argmin", "count", "count_nonzero", "firsts",
                     "flatten", "max", "mean", "min", "num", "prod", "sum")  # fmt: skip


class QueryError(ValueError):
    """A query that cannot run on a file: one sentence naming what is wrong."""


def check_query(selection: Any) -> list[dict]:
    """The subqueries of an Uproot-Raw query; QueryError for a malformed one.

    Checks what can be checked without a file: the structure, and that every cut and
    expression is a Python expression.
    """
    import ast

    if isinstance(selection, dict):
        selection = [selection]
    if not isinstance(selection, list) or not selection:
        raise QueryError("an Uproot-Raw query is a list of subqueries (dictionaries)")
    for i, sub in enumerate(selection, 1):
        if not isinstance(sub, dict) or not ("treename" in sub or "copy_histograms" in sub):
            raise QueryError(
                f"subquery {i} needs a 'treename' (a query on trees) or a 'copy_histograms' "
                "(objects to copy)"
            )
        if "treename" in sub:
            _tree_names(sub["treename"], i)
            texts = [sub.get("cut")] + list(_as_list(sub.get("expressions")))
            texts += list((sub.get("aliases") or {}).values())
            for text in texts:
                if text is None:
                    continue
                if not isinstance(text, str):
                    raise QueryError(f"subquery {i}: {text!r} is not an expression (a string)")
                try:
                    ast.parse(text, mode="eval")
                except SyntaxError as e:
                    raise QueryError(
                        f"subquery {i}: {text!r} does not parse as an expression ({e.msg})"
                    ) from None
    return selection


def skim_file(path: str, selection: list[dict] | dict, result_format: str) -> tuple[bytes, dict]:
    """The output file of ``selection`` on the file at ``path`` (a local path or a
    ``root://`` URL, read with this worker's token), and ``{"events": ..., "trees": ...}``."""

    if result_format not in FORMATS:
        raise QueryError(f"the output format {result_format!r} is not one of {', '.join(FORMATS)}")
    if is_func_adl(selection):
        try:
            outputs, copies = run_func_adl(path, selection), {}
        except FuncADLError as e:
            raise QueryError(str(e)) from None
    else:
        outputs, copies = _uproot_raw(path, check_query(selection))
    events = sum(len(a) for a in outputs.values())
    if result_format == "parquet":
        data = _parquet(outputs)
    else:
        data = _root_file(outputs, copies)
    return data, {"events": events, "trees": sorted(outputs)}


def _uproot_raw(path: str, selection: list[dict]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({output tree: arrays}, {name: copied object})`` of an Uproot-Raw query."""
    import uproot

    outputs: dict[str, Any] = {}
    copies: dict[str, Any] = {}
    with uproot.open(path) as source:
        for i, sub in enumerate(selection, 1):
            if "copy_histograms" in sub:
                copies.update(_copies(source, sub["copy_histograms"]))
                continue
            for name, out in _tree_names(sub["treename"], i).items():
                outputs[out] = _query_tree(source, name, sub, i)
    return outputs, copies


def _as_list(value: Any) -> Iterable:
    if value is None:
        return ()
    return [value] if isinstance(value, str) else value


def _tree_names(treename: Any, i: int) -> dict[str, str]:
    """``{input tree: output tree}`` of a subquery's ``treename``."""
    if isinstance(treename, str):
        names = {treename: treename}
    elif isinstance(treename, list) and all(isinstance(t, str) for t in treename):
        names = {t: t for t in treename}
    elif isinstance(treename, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in treename.items()
    ):
        names = dict(treename)
    else:
        raise QueryError(
            f"subquery {i}: 'treename' is a tree name, a list of them, or a dictionary from "
            "input to output names"
        )
    if not names:
        raise QueryError(f"subquery {i}: 'treename' names no tree")
    return names


def _language():
    import awkward as ak
    from uproot.language.python import PythonLanguage, python_language

    functions = dict(python_language._functions)
    functions.update({name: getattr(ak, name) for name in AWKWARD_FUNCTIONS})
    return PythonLanguage(functions=functions)


def _query_tree(source, name: str, sub: dict, i: int, entry_stop: int | None = None):
    try:
        tree = source[name]
    except KeyError:
        trees = sorted({k.split(";")[0] for k, c in source.classnames().items() if c == "TTree"})
        raise QueryError(
            f"subquery {i}: the file has no tree {name!r} (its trees: {', '.join(trees) or 'none'})"
        ) from None
    arguments = {key: sub[key] for key in TREE_KEYS[1:] if sub.get(key) is not None}
    expressions = arguments.pop("expressions", None)
    try:
        return tree.arrays(expressions, library="ak", language=_language(),
                           entry_stop=entry_stop, **arguments)  # fmt: skip
    except (KeyError, NameError, SyntaxError, TypeError, ValueError) as e:
        raise QueryError(f"subquery {i} on tree {name!r}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__).rstrip(".")


def _copies(source, names: Any) -> dict[str, Any]:
    wanted = list(_as_list(names))
    found = {}
    for key, classname in source.classnames(filter_name=wanted).items():
        if classname != "TTree":
            found[key.split(";")[0]] = source[key]
    return found


class _Sink(io.BytesIO):
    """A file in memory that keeps its bytes when its writer closes it."""

    data = b""

    def close(self) -> None:
        if not self.closed:
            self.data = self.getvalue()
        super().close()


def _root_file(outputs: dict, copies: dict) -> bytes:
    import uproot

    sink = _Sink()
    with uproot.recreate(sink) as out:
        for name, arrays in outputs.items():
            branches = {field: arrays[field] for field in arrays.fields}
            if len(arrays):
                out[name] = branches
            else:  # no event passed: the tree, with its branches' types, and no entries
                out.mktree(name, {field: a.type.content for field, a in branches.items()})
        for name, obj in copies.items():
            out[name] = obj
    return sink.data


def _parquet(outputs: dict) -> bytes:
    import awkward as ak

    if not outputs:
        raise QueryError("a parquet output needs a query on a tree (copied objects cannot go "
                         "into parquet)")  # fmt: skip
    fields = {name: sorted(a.fields) for name, a in outputs.items()}
    if len({tuple(f) for f in fields.values()}) > 1:
        raise QueryError(
            "trees of one parquet output must have the same columns: "
            + "; ".join(f"{n}: {', '.join(f)}" for n, f in fields.items())
        )
    if len(outputs) == 1:
        (table,) = outputs.values()
    else:
        table = ak.concatenate([ak.with_field(a, n, "treename") for n, a in outputs.items()])
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(ak.to_arrow_table(table, extensionarray=False), sink)
    return sink.getvalue()


def file_identity(path: str) -> str:
    """``SIZE:MTIME`` of the file at ``path`` (a local path or a ``root://`` URL), read with
    this worker's own account and token: an OSError names a file it may not read."""
    import os

    if path.startswith(("root://", "roots://")):
        from urllib.parse import urlsplit

        from XRootD import client

        parts = urlsplit(path)
        server = f"{parts.scheme}://{parts.netloc}"
        status, info = client.FileSystem(server).stat("/" + parts.path.lstrip("/"))
        if not status.ok:
            raise OSError(f"cannot read {path}: {status.message.strip()}")
        # Opening checks the right to read (a stat may be allowed to anyone who may list).
        f = client.File()
        opened, _ = f.open(path)
        if not opened.ok:
            raise OSError(f"cannot read {path}: {opened.message.strip()}")
        f.close()
        return f"{info.size}:{int(info.modtime)}"
    with open(path, "rb"):  # the worker's account may read it
        info = os.stat(path)
    return f"{info.st_size}:{int(info.st_mtime)}"


def skim_task(url: str, query: list[dict], result_format: str) -> dict:
    """:func:`skim_file` as a delivery task: a query error is an answer, not a failure to
    retry."""
    try:
        data, stats = skim_file(url, query, result_format)
    except QueryError as e:
        return {"error": str(e)}
    return {"data": data, **stats}


def probe_task(url: str, query: list[dict]) -> str | None:
    """Whether ``query`` runs on the first entry of the file at ``url``: None, or why not."""
    import uproot

    try:
        if is_func_adl(query):
            probe_func_adl(url, query)
            return None
        subqueries = check_query(query)
        with uproot.open(url) as source:
            for i, sub in enumerate(subqueries, 1):
                if "treename" in sub:
                    for name in _tree_names(sub["treename"], i):
                        _query_tree(source, name, sub, i, entry_stop=1)
    except (QueryError, FuncADLError) as e:
        return str(e)
    except OSError as e:
        return f"cannot read {url}: {str(e).strip().splitlines()[0] if str(e).strip() else e}"
    return None
