"""Where a run's chunks run, as the caller sees it: the contract every compute backend fulfils.

A backend is one way of getting workers: this process, a local process pool, a local Dask
cluster, the caller's Dask Gateway cluster, HTCondor or Slurm jobs. The runner
(:func:`casa.analysis.runner.run_analysis`) uses every backend alike, in this order:

1. ``Backend(facility, size, **options)`` builds it from the facility, how many workers
   (:class:`Scaling`) and its own options (``options`` names them). Nothing starts yet.
2. :meth:`ComputeBackend.open` gets the workers (starts them, submits jobs, or connects to
   a running cluster) and returns an :class:`OpenBackend`: the coffea executor, the channel
   workers report finished chunks through, what to print (name, workers, dashboard).
3. :meth:`OpenBackend.for_run` gives one run's :class:`RunSetup`: the executor as that run
   uses it, coffea's cache strategy, uproot options, and the calls the runner's chunk
   wrapper makes on the workers. Only the backend knows its executor's internals.
4. :meth:`ComputeBackend.close` releases everything ``open`` started, also after a failed
   run, and may keep a connection for the next run of this process (the gateway does).

``with backend as opened:`` does 2 and 4. Backends are found by name in the entry-point
group ``casa.compute_backends`` (:mod:`casa.compute.registry`), so a site adds its own
from a package of its own without changing casa.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from casa.errors import UsageError

if TYPE_CHECKING:
    from casa.facility import Facility


class ProgressChannel(abc.ABC):
    """Carries ``(events,)`` reports from workers to the process that shows progress."""

    @abc.abstractmethod
    def reporter(self) -> Callable[[int], None]:
        """A picklable callable that workers call with the events of each finished chunk."""

    @abc.abstractmethod
    def drain(self) -> list[int]:
        """Reports received since the last call (never blocks)."""


@dataclass(frozen=True)
class Scaling:
    """How many workers: a fixed number, adaptive between two bounds, or the backend's default."""

    workers: int | None = None
    minimum: int | None = None
    maximum: int | None = None

    @classmethod
    def parse(cls, workers: int | None, adapt: str | None) -> Scaling:
        """From ``--workers N`` or ``--adapt MIN:MAX`` (neither: the backend's default)."""
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1 (got {workers})")
        if adapt and workers is not None:
            raise UsageError("give either --workers or --adapt, not both")
        if adapt:
            lo, sep, hi = adapt.partition(":")
            try:
                minimum, maximum = int(lo), int(hi)
            except ValueError:
                raise UsageError(f"--adapt {adapt!r} is not MIN:MAX, such as 1:4") from None
            if not sep or minimum < 0 or maximum < max(minimum, 1):
                raise UsageError(f"--adapt {adapt!r} needs 0 <= MIN <= MAX and MAX >= 1")
            return cls(minimum=minimum, maximum=maximum)
        return cls(workers=workers)

    @property
    def adaptive(self) -> bool:
        """Whether the workers come and go between ``minimum`` and ``maximum``."""
        return self.workers is None and self.maximum is not None

    def or_default(self, workers: int) -> Scaling:
        """This scaling, or ``workers`` fixed workers when it names none."""
        if self.workers is None and not self.adaptive:
            return Scaling(workers=workers)
        return self

    @property
    def wait_for(self) -> int:
        """Workers to wait for before the run starts."""
        return self.workers if self.workers is not None else max(self.minimum or 0, 1)


def chunk_key(item: Any) -> tuple[str, int, int]:
    """A chunk's identity: file, first and last entry (coffea may pass ``(item, input)``)."""
    if isinstance(item, tuple) and not hasattr(item, "entrystart"):
        item = item[0]
    return (item.filename, item.entrystart, item.entrystop)


@dataclass(frozen=True)
class ChunkHooks:
    """What the runner's chunk wrapper calls on a worker that keeps state between chunks.

    Both are picklable module-level functions (they travel with each task).
    """

    #: A chunk of this file failed: open the file afresh if the chunk is tried again.
    forget: Callable[[str], None]
    #: Bytes this thread read through kept files since the last call (coffea misses them).
    kept_bytes: Callable[[], int]


@dataclass
class RunSetup:
    """One run on an open backend: how the runner hands its chunks to coffea."""

    executor: Any
    uproot_options: dict = field(default_factory=dict)
    #: coffea's ``cachestrategy`` (``"dask-worker"``: columns kept on the workers).
    cachestrategy: str | None = None
    hooks: ChunkHooks | None = None

    @property
    def column_cache(self) -> bool:
        """Whether the run keeps the columns it reads on the workers."""
        return self.cachestrategy is not None

    @property
    def tree_cache(self) -> bool:
        """Whether the workers keep each file's tree open between chunks."""
        return self.hooks is not None


@dataclass
class OpenBackend:
    """A backend with its workers: the coffea executor, its channel and what to print."""

    executor: Any
    channel: ProgressChannel
    name: str
    workers: int
    dashboard: str | None = None

    def for_run(self, chunks: Sequence, *, column_cache: bool, tree_cache: bool) -> RunSetup:
        """The setup of one run over ``chunks`` (coffea WorkItems, in plan order).

        ``column_cache`` and ``tree_cache`` are what the caller allows; a backend whose
        workers cannot keep columns or trees leaves them out. This one keeps nothing.
        """
        return RunSetup(self.executor)

    def shipping(self, processor: Any) -> contextlib.AbstractContextManager:
        """Around one run: the folder of ``processor``'s file on the workers
        (:mod:`casa.compute.code`). Local workers need nothing: they share this machine's
        files and are started with this process's ``sys.path``."""
        return contextlib.nullcontext()

    def connected(self) -> bool:
        """Whether the workers can still be reached (a lost scheduler ends the run)."""
        return True

    def scheduler_address(self) -> str | None:
        """The scheduler's address, for errors; None where there is no scheduler."""
        return None


def _say_nothing(text: str) -> None:
    return None


class ComputeBackend(abc.ABC):
    """Workers for runs, opened for a run and closed after it (see the module's docstring).

    Subclasses set :attr:`name`, may set :attr:`options`, :attr:`adaptive` and
    :meth:`default_workers`, and implement :meth:`start`.
    """

    #: The name users choose it by (``casa run --cluster``/``--executor``; the registry's).
    name: ClassVar[str]
    #: The keyword options ``__init__`` takes beyond ``facility`` and ``size``.
    options: ClassVar[tuple[str, ...]] = ()
    #: Whether the workers can adapt between ``--adapt MIN:MAX``.
    adaptive: ClassVar[bool] = False
    #: Whether the workers read ``root://`` with the caller's own token (found here by WLCG
    #: discovery, so the runner checks for it first); False where the workers get theirs
    #: elsewhere (the gateway hands each cluster its owner's token).
    callers_token: ClassVar[bool] = True
    #: Whether the workers get a copy of the analysis's folder (:mod:`casa.compute.code`):
    #: Dask workers do; local processes share this machine's files and ``sys.path``.
    ships_analysis_folder: ClassVar[bool] = False

    def __init__(self, facility: Facility | None = None, size: Scaling | None = None):
        size = size or Scaling()
        if size.adaptive and not self.adaptive:
            raise UsageError(
                f"--adapt needs workers that come and go: {self.name} has a fixed number; use "
                "--workers N, or --cluster gateway"
            )
        self.facility = facility
        self.size = size.or_default(self.default_workers())
        self._stack: contextlib.ExitStack | None = None
        #: Told, in a few words, what starting is doing now ("3 of 4 workers ready"); the
        #: command line shows it while the user waits.
        self.say: Callable[[str], None] = _say_nothing

    def default_workers(self) -> int:
        """Workers when the caller names none."""
        return 1

    def _needs_facility(self) -> Facility:
        if self.facility is None:
            raise UsageError(f"the {self.name} backend needs the facility (its casa.toml)")
        return self.facility

    @abc.abstractmethod
    def start(self, stack: contextlib.ExitStack) -> OpenBackend:
        """Get the workers and return them open.

        Everything :meth:`close` must release (pools, clusters, jobs, connections, token
        renewals) goes onto ``stack`` as it is started, so that a failure part way through
        releases what was started already. Raise :class:`casa.errors.ServiceError` with one
        sentence when workers do not come (name the backend and where to look).
        """

    def open(self) -> OpenBackend:
        """Start (or connect to) the workers: :meth:`start`, undone at once if it fails."""
        if self._stack is not None:
            raise RuntimeError(f"the {self.name} backend is open already")
        stack = contextlib.ExitStack()
        try:
            opened = self.start(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return opened

    def close(self) -> None:
        """Release what :meth:`open` started (nothing if it is not open)."""
        self.__exit__(None, None, None)

    def __enter__(self) -> OpenBackend:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)
