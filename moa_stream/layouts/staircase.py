"""`staircase`: append-only; later chunks arrive as blocks after the aggregator's own partial answer.

The context is only ever appended to, so each intake costs its new tokens: the prompt head (system, history,
question) is prefilled while the proposers write their first chunks, the first chunks close the user turn,
and each later chunk is a `[more from model N]` block after the partial answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import prompts
from ..agents import AgentSlot, Chunk
from ..context import Message
from .base import Answer, IncrementalLayout, register_layout
from .references import escape_delimiters, references_block

if TYPE_CHECKING:
    from ..turn import TurnInput

_REFS = "\u2063REFS\u2063"  # where the prompt is cut: the first chunks go there


def staircase_user(question: str, references: str) -> str:
    """The staircase user turn: the question, then `references` (text, or a marker to cut the prompt at)."""
    return prompts.render("staircase_user", question=question, references=references)


def staircase_references(first_chunks: Sequence[str | None]) -> str:
    """The first chunk of each proposal that has one, labelled by proposer."""
    return references_block(first_chunks, "staircase_reference") or "(none yet)"


def staircase_more(index: int, text: str) -> str:
    """A later chunk of proposal `index` (0-based), appended after the aggregator's partial answer."""
    return prompts.render("staircase_more", index=index + 1, text=escape_delimiters(text))


def block_markers() -> tuple[str, ...]:
    """Strings that open or close a staircase block: the aggregator must never write them itself."""
    return tuple(line for line in prompts.template("more_marker").splitlines() if line)


def resume_cue(answer: str, max_chars: int = 48) -> str:
    """The end of the partial answer, from a word boundary: repeated after a block so the answer resumes."""
    tail = answer[-max_chars:]
    if len(answer) > max_chars and " " in tail:
        tail = tail[tail.index(" ") + 1:]
    return escape_delimiters(tail)


@register_layout
class StaircaseLayout(IncrementalLayout):
    """Head prefilled early, first chunks appended to the user turn, later chunks as blocks in the answer."""

    name = "staircase"

    def __init__(self, agg: AgentSlot, inp: TurnInput) -> None:
        super().__init__(agg, inp)
        self._tail: list[int] = []  # the prompt after the first chunks: the rest of the user turn

    def markers(self) -> tuple[str, ...]:
        """The block markers: a model that writes one wants more to read."""
        return block_markers()

    def banned(self) -> tuple[int, ...]:
        """Every token holding '[': the model would imitate our blocks, so it may not open one at all."""
        return self.agg.fmt.bracket_tokens

    async def prime(self) -> None:
        """Prefill everything before the references (or append the new turn to the conversation's sequence)."""
        user = staircase_user(self.inp.question, _REFS)
        system = self.agg.cfg.system_prompt or prompts.template("staircase_system")
        msgs = [Message("system", system), *self.inp.history, Message("user", user)]
        self._tail = await self.agg.start(msgs, user, self.reusable(), _REFS)

    async def start(self, texts: Sequence[str]) -> None:
        """Append the first chunks and the rest of the user turn, up to the answer."""
        slot = self.agg
        assert slot.seq is not None
        await slot.engine.append(slot.seq, slot.fmt.encode_text(staircase_references(texts)) + self._tail)
        slot.layout = self.name

    async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
        """Append each chunk as a block after the partial answer."""
        text = "".join(staircase_more(c.proposer, c.text) for c in chunks)
        # Echo the answer's last words after the blocks, so the model resumes its sentence instead of
        # imitating the block pattern (costs a few tokens per intake, still O(Δ)).
        text += resume_cue(answer.text) if self.inp.knobs.resume_cue else ""
        self.filter.at_intake()
        slot = self.agg
        assert slot.seq is not None
        await slot.engine.append(slot.seq, slot.fmt.encode_text(text))

