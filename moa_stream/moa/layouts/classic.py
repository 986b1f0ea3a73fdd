"""`classic`: wait for every proposal, then aggregate (MoA's aggregate-and-synthesize prompt)."""

from __future__ import annotations

from collections.abc import Sequence

from .base import AggregatorLayout, register_layout
from .references import aggregate_prompt


@register_layout
class ClassicLayout(AggregatorLayout):
    """One fresh prompt holding every whole proposal as a reference."""

    name = "classic"

    async def start(self, texts: Sequence[str]) -> None:
        """Open the aggregate prompt over the finished proposals."""
        await self.agg.open_fresh(aggregate_prompt(self.agg, self.inp.question, self.inp.history, texts))
