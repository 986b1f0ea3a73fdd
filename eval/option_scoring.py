"""Multiple-choice answers by option log-likelihood from the aggregator's context at the moment it starts answering.

The lm-evaluation-harness convention: each option's continuation is scored as sum log p(continuation | context),
and the pick is the argmax, raw or normalised by the continuation's length in characters (lm-eval's acc_norm).
The context is the one the mode really builds: proposers run and chunks are taken in exactly as in a turn, up to
where the aggregator would sample its first answer token; there the options are scored instead, and the turn
ends. Engines that cannot score (remote ones) raise UnsupportedFeatureError.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from moa_stream import MoA, StaircaseConfig, UnsupportedFeatureError

__all__ = ["OptionScores", "UnsupportedFeatureError", "score_options"]


@dataclass(frozen=True)
class OptionScores:
    """Each option's summed log-probability and length, scored from one mode's answer-start context."""

    mode: str
    logprobs: tuple[float, ...]  # sum over the option's tokens of log p(token | context, earlier option tokens)
    tokens: tuple[int, ...]  # tokens per option
    chars: tuple[int, ...]  # characters per option (the normaliser of `normalized`)
    context_tokens: int  # the aggregator's context when the answer would start
    start_s: float  # seconds from the question to the answer start (the TTFT analogue)
    total_s: float  # start_s plus the scoring
    chunks_ingested: int  # proposal chunks the context held at the answer start
    prefill_computed: int  # tokens every agent computed, scoring included
    prefill_reused: int

    @property
    def normalized(self) -> tuple[float, ...]:
        """Log-likelihood per character of each option."""
        return tuple(lp / max(1, n) for lp, n in zip(self.logprobs, self.chars, strict=True))

    @property
    def best(self) -> int:
        """Index of the most likely option (sum of log-probabilities)."""
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)

    @property
    def best_normalized(self) -> int:
        """Index of the most likely option per character."""
        norm = self.normalized
        return max(range(len(norm)), key=norm.__getitem__)


async def score_options(moa: MoA, question: str, options: Sequence[str], *, mode: str | None = None,
                        staircase: StaircaseConfig | None = None, cache_salt: str | None = None) -> OptionScores:
    """Run `mode` on `question` up to the answer start, then score each option as the answer's continuation."""
    if not options or any(not isinstance(o, str) or not o for o in options):
        raise ValueError("options must be non-empty strings")
    conv = moa.conversation(mode, cache_salt=cache_salt)  # checks the mode; owns the agent slots
    logprobs: list[float] = []
    counts: list[int] = []
    async with conv.answer_start(question, staircase=staircase) as at:
        for text in options:
            ids = at.engine.tokenizer.encode(text, add_special_tokens=False)
            logprobs.append(sum(await at.engine.score(at.seq, ids)))
            counts.append(len(ids))
        total_s = time.perf_counter() - at.t0
        computed, reused = at.prefill()
    return OptionScores(
        mode=conv.mode, logprobs=tuple(logprobs), tokens=tuple(counts), chars=tuple(len(o) for o in options),
        context_tokens=at.context_tokens, start_s=at.start_s, total_s=total_s, chunks_ingested=at.chunks_ingested,
        prefill_computed=computed + sum(counts), prefill_reused=reused)
