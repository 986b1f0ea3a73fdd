"""`shifted`: the re-prefill layout's text order at append-only cost; each chunk goes in after its proposal's text.

Measured on Qwen2.5-Coder-1.5B (issue 22), the layouts that append chunks after the partial answer lose it: the
model reads the newest chunk as what to say next and copies its fragment, or loops. The re-prefill layout keeps
the answer because the model always reads question, references, answer, in that order, but it re-reads the
whole prompt at every intake. Here the aggregator's prompt is the re-prefill one (MoA's aggregate system prompt
with one numbered reference per proposal, then the question) and a new chunk is inserted where its proposal's
text ends, before the answer in position order (Engine.insert: only the chunk is computed; the cached positions
after it, the answer's among them, move on). The chunk reads what precedes it, as in a re-prefill; the answer
already written keeps the KV it had (read before the chunk came), and every token written next reads it all.

An EOS ends the answer, as in the re-prefill layout. The engine must be able to move cached positions (the
llama.cpp engine); the layout says so before the turn starts otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine import Engine

from ... import prompts
from ...agent.context import Message
from ...agent.slot import AgentSlot, Chunk
from ...errors import ConfigError
from .base import Answer, IncrementalLayout, register_layout
from .references import aggregate_system, escape_delimiters

if TYPE_CHECKING:
    from ..turn_input import TurnInput

_ITEMS = "\u2063ITEMS\u2063"  # where the prompt is cut: the references go there


@register_layout
class ShiftedLayout(IncrementalLayout):
    """The aggregate prompt over the proposals, each chunk inserted after its proposal's text, then the answer."""

    name = "shifted"

    def __init__(self, agg: AgentSlot, inp: TurnInput) -> None:
        super().__init__(agg, inp)
        self._tail: list[int] = []  # the prompt after the references: the rest of the system turn, the question
        self._ends: dict[int, int] = {}  # proposer -> the position right after its reference's text
        self._block_end = 0  # where a proposal's first reference item goes

    @classmethod
    def runs_on(cls, engine: Engine) -> bool:
        """Only where the engine can insert tokens inside a sequence (the llama.cpp engine)."""
        return engine.can_insert

    def reusable(self) -> bool:
        """Never: each turn opens its own prompt, as the re-prefill layout does (the prefix cache serves its head)."""
        return False

    async def prime(self) -> None:
        """Prefill the system prompt up to the references (they are written now)."""
        slot = self.agg
        # The agent's own system prompt (a persona, a debate round's instruction) follows the references, so that
        # every reader of a layer opens on the same head and the prefix cache computes it once.
        own = slot.cfg.system_prompt
        system = aggregate_system([]) + _ITEMS + (f"\n\n{own}" if own else "")
        head, self._tail = slot.fmt.prompt_split(
            [Message("system", system), *self.inp.history, Message("user", self.inp.question)], _ITEMS)
        if not self.runs_on(slot.engine):
            raise ConfigError(f"layout {self.name!r} needs an engine that can move cached positions (the llama.cpp "
                              f"engine); {slot.engine.model_name} runs on one that cannot: use another layout")
        await slot.open_fresh(head)
        self._block_end = len(head)

    async def start(self, texts: Sequence[str]) -> None:
        """Append the first chunks as references and the rest of the prompt, up to the answer."""
        slot = self.agg
        assert slot.seq is not None
        ids: list[int] = []
        for p, text in enumerate(texts):
            if text.strip():
                piece = self._encode(self._item(p, text))
                ids += piece
                self._ends[p] = self._block_end + len(ids)
        self._block_end += len(ids)
        await slot.engine.append(slot.seq, ids + self._tail)
        slot.layout = self.name

    async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
        """Insert each proposal's new text where its reference ends (a first one as a new reference)."""
        new: dict[int, str] = {}
        for c in chunks:
            new[c.proposer] = new.get(c.proposer, "") + c.text
        for p, text in new.items():
            if p in self._ends:
                await self._insert(self._ends[p], self._encode(escape_delimiters(text)), p)
            elif text.strip():
                await self._insert(self._block_end, self._encode(self._item(p, text)), p)

    def _item(self, p: int, text: str) -> str:
        sep = "\n" if self._ends else ""
        return sep + prompts.render("reference_item", index=p + 1, text=escape_delimiters(text.lstrip()))

    def _encode(self, text: str) -> list[int]:
        return self.agg.fmt.encode_text(self.agg.fmt.neutralize(text)) if text else []

    async def _insert(self, at: int, ids: list[int], p: int) -> None:
        if not ids:
            return
        slot = self.agg
        assert slot.seq is not None
        await slot.engine.insert(slot.seq, at, ids)
        # What lay after `at` moved on: the ends of the later references and the block's end; p's text now ends
        # after the inserted ids (a reference ending right at `at` stays where it is: it precedes them).
        self._ends = {q: e + len(ids) if e > at else e for q, e in self._ends.items()}
        self._ends[p] = at + len(ids)
        if self._block_end >= at:
            self._block_end += len(ids)
