"""Which coffea NanoEvents schema a run reads its trees with: a name, ``module:Class`` or ``file.py:Class``.

coffea's own schemas are found in ``coffea.nanoevents`` itself (every ``BaseSchema``
subclass it exports), so a schema a new coffea release adds is accepted without a change
here. A user's own schema is a ``BaseSchema`` subclass in an importable module
(``mypackage.schemas:MySchema``) or in a file (``path/to/schemas.py:MySchema``); a file is
imported as ``casa run`` imports a processor's file, so its code travels to the workers.
"""

from __future__ import annotations

import copyreg
import importlib
import traceback
from pathlib import Path

from casa.errors import UsageError

#: The schema of a run that names none (and whose dataset records none).
DEFAULT_SCHEMA = "NanoAODSchema"


def schema_names() -> list[str]:
    """Names of the schema classes coffea ships (``coffea.nanoevents``'s ``BaseSchema`` subclasses)."""
    import coffea.nanoevents as nanoevents
    from coffea.nanoevents.schemas.base import BaseSchema

    return sorted(
        name
        for name, value in vars(nanoevents).items()
        if isinstance(value, type) and issubclass(value, BaseSchema)
    )


def resolve_schema(spec: str | type | None) -> type:
    """The schema class named by ``spec`` (``None`` for the default, NanoAODSchema).

    ``spec`` is one of :func:`schema_names`, ``module:Class``, ``path/to/file.py:Class``, or
    a ``BaseSchema`` subclass itself; anything else is a UsageError naming the choices.
    """
    import coffea.nanoevents as nanoevents
    from coffea.nanoevents.schemas.base import BaseSchema

    if spec is None:
        spec = DEFAULT_SCHEMA
    if isinstance(spec, type):
        cls, where = spec, f"{spec.__module__}.{spec.__qualname__}"
    elif ":" not in spec:
        if spec not in schema_names():
            raise UsageError(
                f"unknown schema {spec!r}: choose one of coffea's {', '.join(schema_names())}, "
                "or name your own as module:Class or path/to/file.py:Class"
            )
        return getattr(nanoevents, spec)
    else:
        cls, where = _import_schema(spec), spec
    if not (isinstance(cls, type) and issubclass(cls, BaseSchema)):
        raise UsageError(
            f"schema {where} is not a coffea schema: derive it from "
            "coffea.nanoevents.BaseSchema (or one of its subclasses, such as NanoAODSchema)"
        )
    return cls


def _import_schema(spec: str) -> object:
    """The object ``module:Class`` or ``file.py:Class`` names; UsageError if there is none."""
    from casa.analysis.registry import import_user_file

    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UsageError(
                f"schema file {path} does not exist: give --schema path/to/file.py:Class"
            )
        module = import_user_file(path)
        if not hasattr(module, name):
            raise UsageError(f"{where} has no schema class {name!r}")
        return _shipped_by_value(getattr(module, name))
    try:
        module = importlib.import_module(where)
    except Exception:
        raise UsageError(
            f"schema module {where!r} cannot be imported: check that it is installed or on "
            "PYTHONPATH, or give its file as path/to/file.py:Class",
            details=traceback.format_exc(),
        ) from None
    if not hasattr(module, name):
        raise UsageError(f"{where} has no schema class {name!r}")
    return getattr(module, name)


class ShippedByValue(type):
    """Metaclass of a schema from a user's file, so that it travels to workers by value.

    coffea's Runner sends its schema class to the workers inside the task, pickled by
    reference (the standard pickle of a process pool, and Dask's first choice), and workers
    cannot import a user's file by the name casa imported it under. A class of this
    metaclass is pickled (``copyreg``, which pickle consults before it pickles a class by
    name) as the user's class by value with cloudpickle, and comes back as a class of this
    metaclass again: a Dask scheduler that unpickles a task and pickles it again for a
    worker sends it by value too.
    """


#: The class of this metaclass made for each user's schema class, made once per process.
_SHIPPED: dict[type, type] = {}


def _reduce_by_value(cls: type) -> tuple:
    import cloudpickle

    return _load_by_value, (cloudpickle.dumps(cls.__bases__[0]),)


def _load_by_value(blob: bytes) -> type:
    """The user's schema class unpickled by value, as a class of :class:`ShippedByValue`."""
    import cloudpickle

    return _shipped_by_value(cloudpickle.loads(blob))


copyreg.pickle(ShippedByValue, _reduce_by_value)


def _shipped_by_value(cls: object) -> object:
    """A subclass of ``cls`` (a class of plain metaclass) that pickles as ``cls`` by value."""
    if not isinstance(cls, type) or type(cls) is not type:
        return cls  # not a class, or a metaclass of its own: resolve_schema reports or keeps it
    if cls not in _SHIPPED:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        _SHIPPED[cls] = ShippedByValue(cls.__name__, (cls,), namespace)
    return _SHIPPED[cls]
