"""The eval's progress bar: items done out of the total, the time left, and the item running now."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


@dataclass
class ProgressBar:
    """One running bar: say what runs now, then advance once it is done."""

    bar: Progress
    task: TaskID

    def show(self, description: str) -> None:
        """Name the item that runs now."""
        self.bar.update(self.task, description=description)

    def advance(self) -> None:
        """Count one more item done."""
        self.bar.advance(self.task)


@contextmanager
def progress_bar(total: int, enabled: bool = True, console: Console | None = None) -> Iterator[ProgressBar]:
    """A bar over `total` items, drawn while the block runs on `console` (default: rich's; `enabled`
    False: nothing is drawn)."""
    # rich is imported here, not at the top: importing eval's modules stays cheap for tests and the CLI's help.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console, disable=not enabled, transient=False) as bar:
        yield ProgressBar(bar, bar.add_task("", total=total))
