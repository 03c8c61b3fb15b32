"""Where chunks of work run: the contract every compute backend fulfils.

A backend opens a coffea executor for one run and a channel through which workers
report each finished chunk, so that the caller can show live progress. Local
backends (iterative, futures, dask) live in :mod:`casa.compute.local`; the Dask
Gateway backend joins them later.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ProgressChannel(abc.ABC):
    """Carries ``(events,)`` reports from workers to the process that shows progress."""

    @abc.abstractmethod
    def reporter(self) -> Callable[[int], None]:
        """A picklable callable that workers call with the events of each finished chunk."""

    @abc.abstractmethod
    def drain(self) -> list[int]:
        """Reports received since the last call (never blocks)."""


@dataclass
class OpenBackend:
    """A backend ready for one run: the coffea executor, its channel and what to print."""

    executor: Any
    channel: ProgressChannel
    name: str
    workers: int
    dashboard: str | None = None
    #: The workers hold casa's column cache plugin (:mod:`casa.worker.column_cache`).
    column_cache: bool = False
    #: The workers hold casa's tree cache plugin (:mod:`casa.worker.tree_cache`).
    tree_cache: bool = False


class ComputeBackend(abc.ABC):
    """Opens executors; ``open`` is a context manager that releases everything it started."""

    name: str

    @abc.abstractmethod
    def open(self, workers: int):
        """Context manager yielding an :class:`OpenBackend` with ``workers`` workers."""
