"""`blocks`: append-only; later chunks arrive as blocks after the aggregator's own partial answer, in its turn.

Each intake costs its new tokens. A `[more from model N]` block goes right after the partial answer; the
answer's last words are echoed after it (the resume cue) so the model resumes its sentence. The model may
imitate a block: the marker filter hides one it starts and ends the step there. Nothing is banned from
sampling, so the answer may hold '[' like any other mode's (a Python list, a markdown link).
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import prompts
from ...agent.slot import Chunk
from .append_only import AppendOnlyLayout, resume_cue
from .base import Answer, register_layout
from .references import escape_delimiters


def staircase_more(index: int, text: str) -> str:
    """A later chunk of proposal `index` (0-based), appended after the aggregator's partial answer."""
    return prompts.render("staircase_more", index=index + 1, text=escape_delimiters(text))


def block_markers() -> tuple[str, ...]:
    """Strings that open or close a staircase block: the aggregator must never write them itself."""
    return tuple(line for line in prompts.template("more_marker").splitlines() if line)


@register_layout
class BlocksLayout(AppendOnlyLayout):
    """Later chunks as `[more from model N]` blocks inside the answer's own turn."""

    name = "blocks"
    system_template = "staircase_system"
    reference_template = "staircase_reference"

    def markers(self) -> tuple[str, ...]:
        """The block markers: a model that writes one wants more to read."""
        return block_markers()

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
