"""Aggregator layouts: one class per mode, chosen by name; a newly registered layout is driven like the others."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import pytest

from moa_stream import LAYOUT_MODES, ConfigError, MoA
from moa_stream.moa.layouts import (
    LAYOUTS,
    AggregatorLayout,
    BlocksLayout,
    ClassicLayout,
    InterleavedLayout,
    ReprefillLayout,
    SingleLayout,
    StaircaseLayout,
    layout_class,
    register_layout,
)
from moa_stream.moa.layouts.marker_filter import MarkerFilter
from moa_stream.moa.layouts.references import aggregate_prompt
from tests.moa_stream.test_moa import LONG_QUESTION, small_config


def test_each_mode_selects_its_layout_class_by_name() -> None:
    expected = {"single": SingleLayout, "classic": ClassicLayout, "staircase-reprefill": ReprefillLayout,
                "blocks": BlocksLayout, "interleaved": InterleavedLayout}
    assert set(expected) | {"staircase"} == set(LAYOUT_MODES)
    for mode, cls in expected.items():
        assert layout_class(mode) is cls and cls.name == mode
    # `staircase` names the default append-only layout (issue 10): an alias, not a layout of its own.
    assert layout_class("staircase") is StaircaseLayout and StaircaseLayout.name in ("shifted", "interleaved")
    with pytest.raises(ConfigError, match="mode must be one of single, classic, staircase-reprefill, staircase"):
        layout_class("ladder")


def test_a_layout_name_can_be_registered_once() -> None:
    class Other(AggregatorLayout):
        name = "staircase"

        async def start(self, texts: Sequence[str]) -> None:
            """Never run."""

    with pytest.raises(ValueError, match=f"taken by {StaircaseLayout.__name__}"):
        register_layout(Other)


def test_marker_filter_holds_blank_lines_before_a_marker_and_drops_them_at_one() -> None:
    f = MarkerFilter(("[more", "[end of"))
    assert f.push("Rome fell") == ("Rome fell", False)
    assert f.push(" in 476.\n\n[mo") == (" in 476.", False)  # the blank lines and the partial marker wait
    assert f.push("re") == ("", True)  # a whole marker: the step ends, nothing of it is shown
    assert f.push("\n\nIt") == ("\n\nIt", False)
    f.push(" was\n\n")
    f.at_intake()  # the blank lines where a block went become one space
    assert f.push("\nlate.") == (" late.", False)
    assert f.push(" [") == ("", False) and f.flush() == ""


class ClassicOnce(AggregatorLayout):
    """A test layout: the classic prompt over whole proposals, recording what the driver handed it."""

    name = "test-classic-once"
    seen: ClassVar[list[list[str]]] = []

    async def start(self, texts: Sequence[str]) -> None:
        """Record the proposals, then open the aggregate prompt."""
        type(self).seen.append(list(texts))
        await self.agg.open_fresh(aggregate_prompt(self.agg, self.inp.question, self.inp.history, texts))


@pytest.fixture
def registered() -> Iterator[type[ClassicOnce]]:
    register_layout(ClassicOnce)
    ClassicOnce.seen.clear()
    yield ClassicOnce
    del LAYOUTS[ClassicOnce.name]


async def test_a_newly_registered_layout_is_used_by_the_driver(engine, registered) -> None:
    moa = MoA.from_config(small_config(), engines={"default": engine})
    result = await moa.run(LONG_QUESTION, mode=registered.name)
    assert result.metrics.mode == registered.name
    [texts] = registered.seen  # started once, after every proposal was over (it is not incremental)
    assert len(texts) == 3 and all(texts)
    assert all(result.metrics.agents[n].completion_tokens > 0 for n in ("analyst", "explainer", "skeptic"))
    assert result.answer and result.metrics.chunks_ingested >= 3
    assert engine.stats().sequences_open == 0
