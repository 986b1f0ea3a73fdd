"""`single`: the aggregator answers alone; no proposer runs."""

from __future__ import annotations

from collections.abc import Sequence

from ...agent.context import Message
from .base import AggregatorLayout, register_layout


@register_layout
class SingleLayout(AggregatorLayout):
    """The aggregator's own chat, continued turn after turn in one live sequence."""

    name = "single"
    reads_proposals = False

    async def start(self, texts: Sequence[str]) -> None:
        """Open (or extend, in a conversation) the aggregator's chat up to its answer."""
        system = self.agg.cfg.system_prompt
        msgs = [*([Message("system", system)] if system else []), *self.inp.history,
                Message("user", self.inp.question)]
        await self.agg.start(msgs, self.inp.question, self.reusable())
        self.agg.layout = self.name
