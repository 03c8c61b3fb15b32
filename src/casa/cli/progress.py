"""Progress bars shared by the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def event_progress(label: str, total: int, console: Console) -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` events; yields a function that advances it by some events."""
    with Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


class ChunkProgress:
    """What a run is doing, from its first moment: the step it is at (loading the analysis,
    reading the catalog, starting the workers), then a bar over its chunks with events done,
    the event rate and the time left."""

    def __init__(self, label: str, console: Console):
        self._steps = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        self._progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed}/{task.total} chunks"),
            TextColumn("{task.fields[events]:,}/{task.fields[total_events]:,} events"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
        )
        self._label = label
        self._task = None
        self._step = None
        self._live: Progress | None = None

    def __enter__(self) -> ChunkProgress:
        self._live = self._steps
        self._steps.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def step(self, text: str) -> None:
        """Say what the run is doing now (before its chunks start)."""
        if self._live is not self._steps:
            return
        if self._step is None:
            self._step = self._steps.add_task(text, total=None)
        else:
            self._steps.update(self._step, description=text)
        self._steps.console.print(f"[dim]{text}[/]", highlight=False)

    def start(self, chunks: int, events: int, dashboard: str | None) -> None:
        """Called once the workers are ready."""
        if self._live is self._steps:
            self._steps.__exit__(None, None, None)
            self._progress.__enter__()
            self._live = self._progress
        if dashboard:
            self._progress.console.print(f"Dask dashboard: {dashboard}")
        self._task = self._progress.add_task(
            self._label, total=chunks, events=0, total_events=events, rate=""
        )

    def update(self, chunks: int, events: int) -> None:
        """Called as chunks finish."""
        if self._task is None:
            return
        task = self._progress.tasks[self._task]
        elapsed = task.elapsed or 0.0
        rate = event_rate(events / elapsed) if elapsed > 0 else ""
        self._progress.update(self._task, completed=chunks, events=events, rate=rate)


def event_rate(per_second: float) -> str:
    """``1.08 M events/s``, ``6.7 k events/s``: the bar's and the summary's rate alike."""
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M events/s"
    return f"{per_second / 1e3:.1f} k events/s"
