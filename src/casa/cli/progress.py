"""Progress bars shared by the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
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
    """A bar over the chunks of a run that also shows events done and the event rate."""

    def __init__(self, label: str, console: Console):
        self._progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed}/{task.total} chunks"),
            TextColumn("{task.fields[events]:,}/{task.fields[total_events]:,} events"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._label = label
        self._task = None

    def __enter__(self) -> ChunkProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, chunks: int, events: int, dashboard: str | None) -> None:
        """Called once the workers are ready."""
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
        rate = f"{events / elapsed / 1e6:.2f} M events/s" if elapsed > 0 else ""
        self._progress.update(self._task, completed=chunks, events=events, rate=rate)
