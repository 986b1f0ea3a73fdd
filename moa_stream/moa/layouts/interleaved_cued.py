"""`interleaved-cued`: the interleaved layout with each intake's user turn made to be read as a continuation.

Measured on Qwen2.5-Coder-1.5B (issue 22), the interleaved aggregator reads an intake's user turn as the newest
material and copies its fragments: a chunk that starts mid-sentence ("more leaves turn grey ...", the middle of a
"common mistakes" remark) lands in the answer word for word, out of its context, and the answer then loops on
what it copied. Here each chunk is introduced by the last words of the part of its proposal read before (so a
fragment keeps its sense), and the turn ends by saying to go on with the answer, not to restart or copy.

An EOS ends the answer here, as in `blocks` and the re-prefill layout: on the 1.5B model interleaved's EOS (which
only ends a turn, so chunks still to come are read and the answer goes on) came after the third of "three short
rules", and reading on turned them into seven. Still append-only: an intake costs its chunks plus a few words per
proposal and the fixed closing line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ... import prompts
from ...agent.slot import Chunk
from .base import register_layout
from .interleaved import InterleavedLayout
from .references import escape_delimiters

_ANCHOR_CHARS = 40


def anchor(before: str, max_chars: int = _ANCHOR_CHARS) -> str:
    """The last words of a proposal's text already read, from a word boundary, on one line."""
    tail = " ".join(before[-max_chars:].split())
    if len(before) > max_chars and " " in tail:
        tail = tail[tail.index(" ") + 1:]
    return escape_delimiters(tail)


@register_layout
class InterleavedCuedLayout(InterleavedLayout):
    """Interleaved, each chunk anchored to its proposal's previous words, each intake ending on a resume line."""

    name = "interleaved-cued"
    eos_ends_turn_only: ClassVar[bool] = False  # a real model's EOS means the answer is done

    def more(self, chunks: Sequence[Chunk], texts: Sequence[str]) -> str:
        """Each proposal's new text after the words it follows, then the line that says to go on."""
        new: dict[int, str] = {}
        for c in chunks:
            new[c.proposer] = new.get(c.proposer, "") + c.text
        items = []
        for p in sorted(new):
            text = new[p].strip()
            if not text:
                continue
            full = texts[p] if p < len(texts) else new[p]
            before = full[:len(full) - len(new[p])] if full.endswith(new[p]) else ""
            items.append(prompts.render("interleaved_continued_anchored", index=p + 1, anchor=anchor(before),
                                        text=escape_delimiters(text)))
        return prompts.render("interleaved_more_cued", references="\n".join(items))
