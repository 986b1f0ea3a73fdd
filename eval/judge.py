"""An LLM judge on any configured backend, through the public API (a MoA run in `single` mode).

Pairwise against a baseline with the order swapped (cancels position bias), and MT-Bench-style single-answer
grading on a 1-10 scale. With the tiny default model the verdicts are weak; the mechanism is the same for any.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from moa_stream import MoA

PAIRWISE = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI \
assistants to the user question displayed below. Choose the assistant that follows the user's instructions and \
answers the user's question better. Do not let the order or the length of the responses influence you.
After your explanation, output your final verdict strictly in this format: "[[A]]" if assistant A is better, \
"[[B]]" if assistant B is better, and "[[C]]" for a tie.

[User Question]
{question}

[The Start of Assistant A's Answer]
{a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{b}
[The End of Assistant B's Answer]"""

GRADE = """Please act as an impartial judge and evaluate the quality of the response provided by an AI \
assistant to the user question displayed below.{reference_note} Be as objective as possible. After your \
explanation, rate the response on a scale of 1 to 10 strictly in this format: "Rating: [[5]]".

{history}[Question]
{question}
{reference}
[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]"""


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'C' (tie) from a judge's reply, or None if it gave none."""
    m = re.search(r"\[\[([ABC])\]\]", text) or re.search(r"(?i)\bverdict\b\W*([ABC])\b", text)
    return m.group(1).upper() if m else None


def parse_rating(text: str) -> float | None:
    """The 1-10 rating from a judge's reply, or None."""
    m = re.search(r"\[\[(\d+(?:\.\d+)?)\]\]", text) or re.search(r"(?i)rating\W*(\d+(?:\.\d+)?)", text)
    if not m:
        return None
    value = float(m.group(1))
    return value if 1 <= value <= 10 else None


class Judge:
    """Asks a model (a MoA config's aggregator agent, alone) to compare or grade answers."""

    def __init__(self, moa: MoA, max_tokens: int = 128) -> None:
        self.moa = moa
        self.max_tokens = max_tokens
        self.replies: list[str] = []  # every reply, in order (to audit a weak judge)

    async def _ask(self, prompt: str) -> str:
        reply = (await self.moa.run(prompt, mode="single", max_tokens=self.max_tokens)).answer
        self.replies.append(reply)
        return reply

    async def pairwise(self, question: str, answer: str, baseline: str) -> float | None:
        """Win rate of `answer` over `baseline` in [0, 1] (tie = 0.5), averaged over both orders."""
        scores = []
        for a, b, mine in ((answer, baseline, "A"), (baseline, answer, "B")):
            verdict = parse_verdict(await self._ask(PAIRWISE.format(question=question, a=a, b=b)))
            if verdict is not None:
                scores.append(0.5 if verdict == "C" else float(verdict == mine))
        return sum(scores) / len(scores) if scores else None

    async def grade(self, question: str, answer: str, reference: str | None = None,
                    history: Sequence[dict[str, str]] = ()) -> float | None:
        """MT-Bench single-answer grade scaled to [0, 1]; `history` holds the earlier turns of a conversation."""
        note = " Compare it with the reference answer." if reference else ""
        ref = f"\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n" if reference else ""
        past = "".join(f"[{m['role'].capitalize()}]\n{m['content']}\n\n" for m in history)
        past = f"[Earlier turns]\n{past}" if past else ""
        rating = parse_rating(await self._ask(GRADE.format(reference_note=note, history=past, question=question,
                                                           reference=ref, answer=answer)))
        return None if rating is None else (rating - 1) / 9
