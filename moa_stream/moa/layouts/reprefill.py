"""`staircase-reprefill`: the paper's layout; each intake rewrites the references into the prompt.

The partial answer is continued from a freshly prefilled sequence, so every intake re-reads the whole prompt
(the engine's prefix cache serves its unchanged head).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...agent.slot import Chunk
from .base import Answer, IncrementalLayout, register_layout
from .references import aggregate_prompt


@register_layout
class ReprefillLayout(IncrementalLayout):
    """The aggregate prompt over the proposals so far, then the partial answer, rebuilt at each intake."""

    name = "staircase-reprefill"

    def _prompt(self, texts: Sequence[str]) -> list[int]:
        return aggregate_prompt(self.agg, self.inp.question, self.inp.history, texts)

    async def start(self, texts: Sequence[str]) -> None:
        """Open the aggregate prompt over the first chunks."""
        await self.agg.open_fresh(self._prompt(texts))

    async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
        """Re-open the prompt with the longer references, followed by the answer so far."""
        await self.agg.open_fresh(self._prompt(texts) + answer.ids)
