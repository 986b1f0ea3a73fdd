"""The eval's one progress bar: it counts items done and names the one running, on the terminal it draws on."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from eval.progress import progress_bar


def drawn(enabled: bool, steps: list[tuple[str, bool]]) -> str:
    """What the bar wrote to a 120-column terminal (escape codes dropped) after `show(item)` / `advance()` steps."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with progress_bar(3, enabled, console=console) as bar:
        for item, done in steps:
            bar.show(item)
            if done:
                bar.advance()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())


def test_the_bar_shows_items_done_out_of_the_total_and_the_running_item() -> None:
    final = drawn(True, [("alpha", True), ("beta", True), ("gamma", False)]).splitlines()[-1]
    assert "eval" in final and "2/3" in final, final
    assert final.rstrip().endswith("gamma"), "the item running now is named last"


def test_advancing_counts_each_item_once() -> None:
    final = drawn(True, [("alpha", True), ("alpha", False), ("beta", True), ("gamma", True)]).splitlines()[-1]
    assert "3/3" in final and "gamma" in final


@pytest.mark.parametrize("steps", [[("alpha", True)], []])
def test_a_disabled_bar_draws_nothing(steps: list[tuple[str, bool]]) -> None:
    assert drawn(False, steps) == ""
