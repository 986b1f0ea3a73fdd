"""A draft agent guesses a step's tool call: a short greedy generation of the call, beside the real step.

On the agent's own engine the draft forks the agent's sequence (O(1) on a stateful engine: the KV is shared)
and decodes under the same call grammar the step uses; on another engine (a smaller model, another backend)
it opens the rendered context, which that engine's prefix cache makes cheap from the second step on. The
guess is handed over the moment the draft's text parses as a complete call, so the call starts while the real
step is still decoding. The draft never writes to the agent's sequence and always closes what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine import Engine, SamplingParams
from engine import Sequence as EngineSequence

from ..tools.call_stream import CallPiece, CallStream
from .tool_speculation import PredictedCall, StepContext


@dataclass
class DraftStats:
    """Drafts started, those that parsed as a call, those the step's end cut short, failures, tokens drafted."""

    drafts: int = 0
    guessed: int = 0
    cancelled: int = 0
    failed: int = 0
    tokens: int = 0


@dataclass
class DraftSpeculator:
    """Guesses each step's call with a short greedy draft (see the module docstring); `engine` None: the agent's."""

    engine: Engine | None = None
    max_tokens: int = 48
    name: str = "draft"
    stats: DraftStats = field(default_factory=DraftStats)

    async def guess(self, context: StepContext) -> PredictedCall | None:
        """The first complete call the draft writes, or None (no call within the budget, or the draft failed)."""
        self.stats.drafts += 1
        engine = self.engine or context.engine
        seq: EngineSequence | None = None
        try:
            try:
                seq = await self._open(engine, context)
            finally:
                context.release()  # forked (or not needed): the real step may decode now
            return await self._draft(engine, seq, context)
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        except Exception:  # a draft that fails is a missed guess: the step never depends on it
            self.stats.failed += 1
            return None
        finally:
            if seq is not None:
                await engine.close(seq)

    def observe(self, calls: Sequence[PredictedCall]) -> None:
        """Nothing to learn: the draft reads the context afresh at every step."""

    @staticmethod
    async def _open(engine: Engine, context: StepContext) -> EngineSequence:
        if engine is context.engine:
            return await engine.fork(context.seq)
        tokens = engine.tokenizer.encode(context.text, add_special_tokens=False)
        return await engine.open(tokens, cache_salt=context.cache_salt)

    async def _draft(self, engine: Engine, seq: EngineSequence, context: StepContext) -> PredictedCall | None:
        sampling = SamplingParams(max_tokens=self.max_tokens, temperature=0.0, structured=context.structured)
        calls = CallStream(context.format)
        async with contextlib.aclosing(engine.generate(seq, sampling)) as stream:
            async for delta in stream:
                self.stats.tokens += len(delta.token_ids)
                for piece in calls.feed(delta.text):
                    if isinstance(piece, CallPiece) and piece.call.error is None:
                        self.stats.guessed += 1
                        return PredictedCall(piece.call.name, dict(piece.call.arguments))
        return None
