"""Find the processor to run: a built-in analysis by name, or a user's ``file.py:ClassName``."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path

from casa.errors import AnalysisError


def builtin_names() -> list[str]:
    """Names of the built-in analyses."""
    from casa.analysis.processors import BUILTIN_PROCESSORS

    return list(BUILTIN_PROCESSORS)


def load_processor(spec: str):
    """An instance of the processor named by ``spec`` (a built-in name or ``path.py:Class``)."""
    from coffea.processor import ProcessorABC

    from casa.analysis.processors import BUILTIN_PROCESSORS

    if spec in BUILTIN_PROCESSORS:
        return BUILTIN_PROCESSORS[spec]()
    path_text, sep, class_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py"):
        raise AnalysisError(
            f"unknown analysis {spec!r}: choose one of {', '.join(builtin_names())}, "
            "or name your own processor as path/to/file.py:ClassName"
        )
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise AnalysisError(f"processor file {path} does not exist")
    module = _import_file(path)
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, ProcessorABC) and v is not ProcessorABC
        )
        hint = f"it defines {', '.join(found)}" if found else "it defines no ProcessorABC subclass"
        raise AnalysisError(f"{path} has no class {class_name!r}: {hint}")
    try:
        instance = cls()
    except Exception:
        raise AnalysisError(
            f"creating {class_name}() from {path} failed", details=traceback.format_exc()
        ) from None
    if not isinstance(instance, ProcessorABC) and not callable(instance):
        raise AnalysisError(
            f"{class_name} in {path} is not a coffea processor: derive it from "
            "coffea.processor.ProcessorABC"
        )
    return instance


def _import_file(path: Path):
    """Import a user's module from its file, so workers receive it by value."""
    import cloudpickle

    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"casa_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AnalysisError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise AnalysisError(f"importing {path} failed", details=traceback.format_exc()) from None
    # Worker processes cannot import this file by name: ship its code with the processor.
    cloudpickle.register_pickle_by_value(module)
    return module
