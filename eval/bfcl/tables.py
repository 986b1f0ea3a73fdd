"""The BFCL reports' tables: one column list (name, cell function) drawn with rich or written as Markdown."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, Callable[[Any], str]]
_LEFT = ("format", "system")


def rich_table(items: Sequence[Any], cols: Sequence[Column], title: str) -> Any:
    """A rich table, a row per item."""
    from rich.table import Table

    t = Table(title=title)
    for name, _ in cols:
        t.add_column(name, justify="left" if name in _LEFT else "right", no_wrap=name == "format")
    for item in items:
        t.add_row(*(cell(item) for _, cell in cols))
    return t


def markdown_table(items: Sequence[Any], cols: Sequence[Column]) -> str:
    """The same table as Markdown (the first two columns left-aligned)."""
    lines = ["| " + " | ".join(name for name, _ in cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    lines += ["| " + " | ".join(cell(item) for _, cell in cols) + " |" for item in items]
    return "\n".join(lines) + "\n"
