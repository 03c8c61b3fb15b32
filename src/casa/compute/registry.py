"""The compute backends by name, found in the ``casa.compute_backends`` entry-point group.

casa's own are declared in its pyproject.toml; a site adds one from its own package::

    [project.entry-points."casa.compute_backends"]
    pbs = "mysite.casa_pbs:PBSBackend"   # a casa.compute.base.ComputeBackend

and ``casa run --cluster pbs`` then uses it.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from casa.errors import UsageError

if TYPE_CHECKING:  # the command line imports this module before it parses its arguments
    from casa.compute.base import ComputeBackend, Scaling
    from casa.facility import Facility

GROUP = "casa.compute_backends"
#: The backends that run on this machine (``casa run --cluster local --executor NAME``).
LOCAL = ("iterative", "futures", "dask")


@functools.cache
def _entry_points() -> dict[str, Any]:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if not found:
        raise UsageError(
            f"no compute backends are registered ({GROUP!r} entry points): casa's installation "
            "is incomplete; run 'make install' (or pip install -e . again)"
        )
    return found


def backend_names() -> list[str]:
    """Every registered backend's name."""
    return sorted(_entry_points())


def backend_class(name: str) -> type[ComputeBackend]:
    """The backend registered as ``name``; UsageError naming the choices otherwise."""
    found = _entry_points()
    if name not in found:
        raise UsageError(
            f"unknown compute backend {name!r}: choose one of {', '.join(sorted(found))}"
        )
    from casa.compute.base import ComputeBackend

    cls = found[name].load()
    if not (isinstance(cls, type) and issubclass(cls, ComputeBackend)):
        raise UsageError(
            f"the compute backend {name!r} ({found[name].value}) is not a ComputeBackend"
        )
    return cls


def create_backend(
    name: str, facility: Facility | None = None, size: Scaling | None = None, **options: Any
) -> ComputeBackend:
    """Build backend ``name`` for ``size`` workers with the ``options`` it takes.

    Options it does not declare (``ComputeBackend.options``) are left out, so a caller may
    offer every option it has (``--worker-memory`` means something to the gateway only).
    """
    cls = backend_class(name)
    taken = {k: v for k, v in options.items() if k in cls.options and v is not None}
    return cls(facility, size, **taken)
