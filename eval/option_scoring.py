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

from engine.errors import UnsupportedFeatureError
from moa_stream.api import MoA
from moa_stream.config import StaircaseConfig
from moa_stream.moa.turn import Turn, TurnInput

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
    inp = TurnInput(question, [], conv.mode, staircase or moa.config.staircase, None, cache_salt=cache_salt)
    turn = Turn(conv.proposer_slots, conv.aggregator_slot, inp, lambda _event: None)
    slot = turn.agg
    logprobs: list[float] = []
    counts: list[int] = []
    try:
        start_s = await turn.run_to_answer_start()
        assert slot.seq is not None
        context_tokens = slot.context_tokens()
        for text in options:
            ids = slot.engine.tokenizer.encode(text, add_special_tokens=False)
            logprobs.append(sum(await slot.engine.score(slot.seq, ids)))
            counts.append(len(ids))
        total_s = time.perf_counter() - turn.t0
        stats = [s.turn_stats() for s in [*(s for layer in conv.proposer_slots for s in layer), slot]]
    finally:
        await conv.close()
    return OptionScores(
        mode=conv.mode, logprobs=tuple(logprobs), tokens=tuple(counts), chars=tuple(len(o) for o in options),
        context_tokens=context_tokens, start_s=start_s, total_s=total_s, chunks_ingested=turn.chunks_ingested,
        prefill_computed=sum(s.prefill_computed for s in stats) + sum(counts),
        prefill_reused=sum(s.prefill_reused for s in stats))
