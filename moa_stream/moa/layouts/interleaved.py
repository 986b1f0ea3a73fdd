"""`interleaved`: append-only; at an intake the answer's turn closes, a user turn brings the chunks, a new
assistant turn goes on with the answer.

The chat template's own turn glue (ChatFormat.next_turn_split) separates the model's text from the proposals,
so there is no in-turn block for the model to imitate and nothing to hide or ban. The answer shown is the
concatenation of the assistant turns; each new turn opens with the answer's unfinished line (the resume cue,
not shown twice) so that the model goes on instead of starting over. An EOS ends only a turn: while chunks remain,
the driver hands them in and the aggregator may go on (StaircaseConfig.read_every_proposal says whether it must
wait for them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ... import prompts
from ...agent.slot import Chunk
from .append_only import AppendOnlyLayout, resume_cue
from .base import Answer, register_layout
from .references import references_block


def interleaved_more(chunks: Sequence[Chunk], template: str = "interleaved_more",
                     item_template: str = "interleaved_continued") -> str:
    """The user turn of one intake: the new part of each proposal that sent one, labelled by proposer."""
    texts: list[str | None] = []
    for c in chunks:
        texts.extend([None] * (c.proposer + 1 - len(texts)))
        texts[c.proposer] = (texts[c.proposer] or "") + c.text
    return prompts.render(template, references=references_block(texts, item_template))


@register_layout
class InterleavedLayout(AppendOnlyLayout):
    """Later chunks in user turns between assistant turns that together are the answer."""

    name = "interleaved"
    system_template = "interleaved_system"
    # Plain labels: a bracketed one such as "[model 2]" is a pattern the model copies into its answer.
    reference_template = "interleaved_reference"
    eos_ends_turn_only: ClassVar[bool] = True

    def more(self, chunks: Sequence[Chunk], texts: Sequence[str]) -> str:
        """The user turn that brings `chunks` (`texts`: every proposal's text so far, these chunks included)."""
        return interleaved_more(chunks)

    async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
        """Close the answer's turn, add a user turn with the chunks, open the next assistant turn."""
        slot = self.agg
        assert slot.seq is not None
        head, tail = slot.fmt.next_turn_split(self.more(chunks, texts), slot.after_eos)
        # The new turn opens with the unfinished line of the answer (not shown again), so that the model ends
        # that line instead of starting its answer over. Only that line: repeating whole earlier lines makes the
        # context repeat itself, which a small model then loops on.
        line = (answer.text + self.filter.held).rsplit("\n", 1)[-1]
        cue = slot.fmt.encode_text(slot.fmt.neutralize(resume_cue(line))) if self.inp.knobs.resume_cue else []
        await slot.engine.append(slot.seq, head + tail + cue)
        slot.after_eos = False
        if not cue:
            self.filter.at_turn()
