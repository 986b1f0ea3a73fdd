"""The eval's one progress bar: it counts items done and names the one running."""

from __future__ import annotations

import pytest

from eval.progress import progress_bar


@pytest.mark.parametrize("enabled", [True, False])
def test_the_bar_counts_items_and_names_the_running_one(enabled: bool) -> None:
    with progress_bar(3, enabled) as bar:
        for item in ("a", "b"):
            bar.show(item)
            bar.advance()
        task = bar.bar.tasks[0]
        assert (task.completed, task.total, task.description) == (2, 3, "b")
