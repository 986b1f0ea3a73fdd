"""What the append-only layouts share: the prompt head prefilled early, the first chunks closing the user turn.

Both `blocks` and `interleaved` open the aggregator the same way: while the proposers write their first chunks
the system prompt, history and question are prefilled; the first chunks and the rest of the user turn are then
appended, up to the answer. They differ only in how later chunks enter (`intake`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from ... import prompts
from ...agent.context import Message
from ...agent.slot import AgentSlot
from .base import IncrementalLayout
from .references import escape_delimiters, references_block

if TYPE_CHECKING:
    from ..turn_input import TurnInput

_REFS = "\u2063REFS\u2063"  # where the prompt is cut: the first chunks go there


def staircase_user(question: str, references: str) -> str:
    """The staircase user turn: the question, then `references` (text, or a marker to cut the prompt at)."""
    return prompts.render("staircase_user", question=question, references=references)


def staircase_references(first_chunks: Sequence[str | None], item_template: str = "staircase_reference") -> str:
    """The first chunk of each proposal that has one, labelled by proposer."""
    return references_block(first_chunks, item_template) or "(none yet)"


def resume_cue(answer: str, max_chars: int = 48) -> str:
    """The end of the partial answer, from a word boundary: repeated after an intake so the answer resumes."""
    tail = answer[-max_chars:]
    if len(answer) > max_chars and " " in tail:
        tail = tail[tail.index(" ") + 1:]
    return escape_delimiters(tail)


class AppendOnlyLayout(IncrementalLayout):
    """Head prefilled early, first chunks appended to the user turn; subclasses say how later chunks enter."""

    system_template: ClassVar[str]  # the prompts/ template of the aggregator's system prompt
    reference_template: ClassVar[str]  # the prompts/ template of one proposal's first chunk

    def __init__(self, agg: AgentSlot, inp: TurnInput) -> None:
        super().__init__(agg, inp)
        self._tail: list[int] = []  # the prompt after the first chunks: the rest of the user turn

    async def prime(self) -> None:
        """Prefill everything before the references (or append the new turn to the conversation's sequence)."""
        user = staircase_user(self.inp.question, _REFS)
        system = self.agg.cfg.system_prompt or prompts.template(self.system_template)
        msgs = [Message("system", system), *self.inp.history, Message("user", user)]
        self._tail = await self.agg.start(msgs, user, self.reusable(), _REFS)

    async def start(self, texts: Sequence[str]) -> None:
        """Append the first chunks and the rest of the user turn, up to the answer."""
        slot = self.agg
        assert slot.seq is not None
        await slot.engine.append(slot.seq, slot.fmt.encode_text(staircase_references(texts, self.reference_template))
                                 + self._tail)
        slot.layout = self.name
