"""Find the processor to run: a built-in analysis by name, or a user's ``file.py:NAME``.

``NAME`` in a user's file is one of

- a ``coffea.processor.ProcessorABC`` subclass: called with the ``--arg`` keyword arguments;
- a processor instance made in the file: used as it is (it takes no ``--arg``);
- a function (or other callable) that is told apart by what it can be called with:
  given ``--arg``, or with no required parameter at all, it is a **factory** and is called
  (with the ``--arg`` keyword arguments) to make the processor; with exactly one required
  positional parameter (``def process(events)``) and no ``--arg``, it is a **callable
  processor**, called on each chunk's events as coffea calls one. A function that can be
  called without arguments but is meant as a callable processor (``def f(events=None)``) is
  ambiguous: casa takes it for a factory and says so when what it returns is no processor.
"""

from __future__ import annotations

import inspect
import json
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from casa.errors import AnalysisError, UsageError


def builtin_names() -> list[str]:
    """Names of the built-in analyses."""
    from casa.analysis.processors import BUILTIN_PROCESSORS

    return list(BUILTIN_PROCESSORS)


def parse_processor_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--arg``) as keyword arguments: VALUE read as JSON if it is JSON,
    else kept as a string; UsageError for a pair without ``=``, a bad name or a repeated key."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(
                f"--arg {pair!r} has no '=': write it as KEY=VALUE, such as --arg cut=25"
            )
        if not key.isidentifier():
            raise UsageError(f"--arg {pair!r}: {key!r} is not a Python argument name")
        if key in out:
            raise UsageError(f"--arg {key} is given twice: give each argument once")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def load_processor(spec: str, args: Mapping[str, Any] | None = None) -> Any:
    """The processor ``spec`` names (a built-in name or ``path.py:NAME``), made with ``args``.

    The result is a ``ProcessorABC`` instance or a callable processor (a function of the
    events); what ``NAME`` may be, and how a function is told apart, is in this module's
    docstring. A bad argument is a UsageError naming it and what ``NAME`` takes.
    """
    from casa.analysis.processors import BUILTIN_PROCESSORS

    args = dict(args or {})
    if spec in BUILTIN_PROCESSORS:
        return _make(BUILTIN_PROCESSORS[spec], args, spec, spec)
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py"):
        raise AnalysisError(
            f"unknown analysis {spec!r}: choose one of {', '.join(builtin_names())}, "
            "or name your own processor as path/to/file.py:NAME"
        )
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise AnalysisError(f"processor file {path} does not exist")
    module = import_user_file(path)
    if not hasattr(module, name):
        found = _processors_in(module)
        hint = (
            f"it defines {', '.join(found)}"
            if found
            else "it defines no ProcessorABC subclass or function"
        )
        raise AnalysisError(f"{path} has no class or function {name!r}: {hint}")
    return _make(getattr(module, name), args, name, f"{name} in {path}")


def _make(obj: Any, args: dict[str, Any], name: str, what: str) -> Any:
    """The processor ``obj`` stands for: a class instantiated, a factory called, or ``obj``."""
    from coffea.processor import ProcessorABC

    if isinstance(obj, type):
        _check_arguments(obj, args, what)
        instance = _call(obj, args, name, what)
        if not _is_processor(instance):
            raise AnalysisError(
                f"{what} is not a coffea processor: derive it from coffea.processor.ProcessorABC"
            )
        return instance
    if isinstance(obj, ProcessorABC):
        if args:
            raise UsageError(
                f"{what} is a processor instance already, so it takes no --arg: name its class "
                "instead, or pass the arguments where the file creates it"
            )
        return obj
    if not callable(obj):
        raise AnalysisError(
            f"{what} is a value of type {type(obj).__name__}, not a processor: name a ProcessorABC subclass, "
            "a function returning a processor, or a function of the events"
        )
    signature = _signature(obj)
    required = [p for p in signature.parameters.values() if _required(p)] if signature else []
    events_only = len(required) == 1 and required[0].kind in _POSITIONAL
    if args and events_only and required[0].name not in args:
        raise UsageError(
            f"{what} requires one argument, {required[0].name}, so it is a callable processor, "
            "and a callable processor takes no --arg (given --arg, a function is a factory): "
            "write a function that takes the arguments and returns the processor"
        )
    if not args and signature is not None:
        if events_only:
            return obj  # a callable processor: coffea calls it with each chunk's events
        if required:
            raise UsageError(
                f"{what} needs {_names(required)} to be called: give them with --arg KEY=VALUE "
                "to use it as a factory, or, as a callable processor, let it require only the "
                "events"
            )
    _check_arguments(obj, args, what)
    made = _call(obj, args, name, what)
    if not _is_processor(made):
        ambiguous = (
            " (it can be called without arguments, so casa took it for a factory; a callable "
            "processor must require its events parameter)"
            if not args and signature is not None and _takes_one_positional(signature)
            else ""
        )
        raise AnalysisError(
            f"{what} returned {_kind(made)}, not a processor{ambiguous}: a factory must return "
            "a ProcessorABC instance or a function of the events"
        )
    return made


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _required(p: inspect.Parameter) -> bool:
    return p.default is inspect.Parameter.empty and p.kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )


def _takes_one_positional(signature: inspect.Signature) -> bool:
    try:
        signature.bind(None)
    except TypeError:
        return False
    return True


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins and C extensions have none
        return None


def _check_arguments(obj: Any, args: dict[str, Any], what: str) -> None:
    """UsageError naming the first argument ``obj`` does not take, or one it needs."""
    signature = _signature(obj)
    if signature is None:
        return
    params = signature.parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    keywords = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    takes = _describe(signature)
    for key in args:
        if key not in keywords and not takes_any:
            raise UsageError(f"--arg {key}: {what} takes no argument {key!r}; it takes {takes}")
    missing = [p for p in params if _required(p) and p.name not in args]
    if missing:
        example = " ".join(f"--arg {p.name}=VALUE" for p in missing)
        raise UsageError(f"{what} needs {_names(missing)}: add {example} (it takes {takes})")


def _describe(signature: inspect.Signature) -> str:
    """``cut, label='all'`` for ``(cut: float, label: str = 'all')``; "no arguments" if empty."""
    parts = []
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.default is inspect.Parameter.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={p.default!r}")
    return ", ".join(parts) if parts else "no arguments"


def _names(params: Sequence[inspect.Parameter]) -> str:
    return ", ".join(p.name for p in params)


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, type):
        return f"the class {value.__name__} (not an instance of it)"
    return f"a value of type {type(value).__name__}"


def _call(obj: Any, args: dict[str, Any], name: str, what: str) -> Any:
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    try:
        return obj(**args)
    except Exception:
        raise AnalysisError(
            f"creating {name}({shown}) from {what} failed", details=traceback.format_exc()
        ) from None


def _is_processor(value: Any) -> bool:
    from coffea.processor import ProcessorABC

    return isinstance(value, ProcessorABC) or (callable(value) and not isinstance(value, type))


def _processors_in(module: Any) -> list[str]:
    """Names in ``module`` that could be named as its processor: its own classes and functions."""
    from coffea.processor import ProcessorABC

    found = []
    for n, v in vars(module).items():
        if n.startswith("_") or getattr(v, "__module__", None) != module.__name__:
            continue
        if (isinstance(v, type) and issubclass(v, ProcessorABC)) or inspect.isfunction(v):
            found.append(n)
    return sorted(found)


def import_user_file(path: Path) -> Any:
    """Import a user's module from its file, its folder importable as under ``python path``
    and shipped to Dask workers (:func:`casa.compute.code.import_analysis_file`)."""
    from casa.compute.code import import_analysis_file

    return import_analysis_file(path)
