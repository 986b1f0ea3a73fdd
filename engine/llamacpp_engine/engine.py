"""The llama.cpp engine's public face: the async Engine API, the loop task that runs steps, and generations.

Each step the Scheduler packs the work, the KVResidency finds it slots and cells, the LlamaContext decodes it
on the worker thread, and the engine hands the results out: it resolves waiting opens/appends/scores and feeds
the token streams of generations through the shared sampler. One asyncio task owns every sequence; llama.cpp
memory is edited only while no decode is in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np
import torch

from .. import model_registry, models
from ..errors import (
    CapacityError,
    EngineError,
    InvalidTokensError,
    ModelLoadError,
    UnsupportedFeatureError,
)
from ..local_engine import LocalEngine
from ..prompt_lookup import PromptLookup
from ..protocol import EngineStats, Sequence, Tokenizer
from ..response_cache import ResponseCache
from ..sequence_table import SequenceTable
from ..step_sampling import SampleRequest
from ..structured_state import Structurer
from . import torch_threads
from .context import ContextOptions, LlamaContext
from .kv_residency import KVResidency
from .scheduler import Chunk, Scheduler, Step
from .sequence_state import LlamaSeq
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_KV_CELLS = 16384


def accepts_model(name: str | None) -> bool:
    """Whether this engine runs the model: the default model (None or one of its names), a model registered by
    name (engine.model_registry) or a .gguf file."""
    return (name is None or name.strip().lower() in models.DEFAULT_ALIASES or name.endswith(".gguf")
            or model_registry.lookup(name) is not None)


def model_path(name: str | None) -> Path:
    """The GGUF file a model name stands for (the shipped one for the default model's names, the model cache's
    for a registered name: ModelLoadError saying how to install it when it is not there)."""
    # engine.models keeps the default model's names and GGUF location private; they are the ones meant here.
    if name is None or name.strip().lower() in models.DEFAULT_ALIASES:
        return models.default_gguf_path()
    registered = model_registry.lookup(name)
    if registered is not None:
        return registered.checked_path()
    if not name.endswith(".gguf"):
        raise ModelLoadError(f"the llama.cpp engine runs GGUF files or the models `moa-stream models list` names; "
                             f"{name!r} is neither (use the transformers backend for Hugging Face models)")
    return Path(name).expanduser()


class LlamaCppEngine(LocalEngine):
    """Stateful engine over a GGUF model run by llama.cpp: see engine.protocol.Engine for the contract."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        kv_cells: int = DEFAULT_KV_CELLS,
        n_seq_max: int = 64,
        max_tokens_per_step: int = 512,
        max_model_len: int | None = None,
        threads: int | None = None,
        gpu_layers: int = 0,
        block_size: int = 16,
        tokenizer: str | None = None,
        keep_closed_prefixes: bool = True,
        name: str | None = None,
        prompt_lookup: PromptLookup | None = None,
        response_cache: ResponseCache | None = None,
        pin_wait_s: float = 30.0,
    ) -> None:
        self._responses = response_cache
        path = model_path(None if model is None else str(model))
        self._ctx = LlamaContext(path, ContextOptions(n_ctx=kv_cells, n_seq_max=n_seq_max,
                                                      n_batch=max_tokens_per_step, threads=threads,
                                                      gpu_layers=gpu_layers))
        try:
            self._tokenizer = load_tokenizer(path, tokenizer)
        except BaseException:
            self._ctx.close()
            raise
        registered = model_registry.lookup(None if model is None else str(model))
        self._name = name or (registered.name if registered else
                              models.DEFAULT_MODEL if path == models.default_gguf_path() else path.name)
        max_len = min(max_model_len or self._ctx.n_ctx_train or kv_cells, kv_cells)
        self._table: SequenceTable[LlamaSeq] = SequenceTable(self._ctx.n_vocab, max_len)
        self.id = self._table.engine_id
        self._eos = frozenset(self._ctx.eog_ids)
        self._kv = KVResidency(self._ctx, self._table, kv_cells, block_size, keep_closed=keep_closed_prefixes)
        self._scheduler = Scheduler(self._table, self._kv, self._ctx.n_batch, prompt_lookup, self._eos,
                                    pin_wait_s)
        self._drafted = 0
        self._draft_accepted = 0
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"llamacpp-{self.id}")
        self._forward_steps = 0
        self._decoding = False
        self._wake: asyncio.Event | None = None
        self._step_done: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._structurer: Structurer | None = None  # built on the first structured generation
        torch_threads.hold()

    # ---------------------------------------------------------------- properties

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's Hugging Face tokenizer (read from the GGUF)."""
        return self._tokenizer

    @property
    def model_name(self) -> str:
        """The name the model was loaded by."""
        return self._name

    @property
    def context(self) -> LlamaContext:
        """The llama.cpp context (for inspection in tests; do not edit its memory)."""
        return self._ctx

    # ---------------------------------------------------------------- public API

    @property
    def can_insert(self) -> bool:
        """Whether the model's cached positions can move (RoPE models: llama.cpp re-rotates the keys)."""
        return self._ctx.can_shift

    async def insert(self, seq: Sequence, at: int, tokens: Seq[int]) -> None:
        """Put `tokens` at position `at`, the later tokens after them; computes only the new tokens.

        The later tokens keep their KV, moved len(tokens) positions on (llama.cpp re-rotates their keys): it was
        computed without the new tokens before it, as text read before they came. The new tokens read only what
        lies before them, as a prefill of the new order would; what is generated next reads everything. Where
        the KV from `at` on is not all computed or is shared with another sequence, it is recomputed after the
        new tokens instead. An empty insert only checks that the engine can insert.
        """
        s = self._table.get(seq)
        self._table.check_idle(s, "insert into")
        new = self._table.check_tokens(tokens, allow_empty=True)
        if not self.can_insert:
            raise UnsupportedFeatureError(f"{self._name}'s KV cache cannot move positions; use a layout that appends")
        if not 0 <= at <= len(s.tokens):
            raise InvalidTokensError(f"insert position {at} is outside sequence {s.id} (0..{len(s.tokens)})")
        if not new:
            return
        if at == len(s.tokens):
            return await self.append(seq, new)
        self._table.check_length(len(s.tokens) + len(new))
        await self._out_of_decode()
        if self._kv.movable(s, at):
            if await self._insert_moving(s, at, new):
                return
            s = self._table.get(seq)  # it changed while the fork computed: recompute its tail instead
            self._table.check_idle(s, "insert into")
            await self._out_of_decode()
        self._kv.truncate(s, at)
        self._place(s, at, new)
        await self._compute(s, rollback_to=len(s.tokens))

    async def _insert_moving(self, s: LlamaSeq, at: int, new: list[int]) -> bool:
        """Compute `new` on a fork of s's first `at` positions, then splice it in; False if s changed meanwhile."""
        donor = LlamaSeq(self._table.new_id(), s.tokens[:at] + new)
        self._kv.fork(s, donor, protect=set(), upto=at)
        handle = self._table.add(donor)
        pinned, s.pinned_until = s.pinned_until, math.inf  # its KV must stay where it is while the fork computes
        try:
            await self._compute(donor, rollback_to=len(donor.tokens))
            await self._out_of_decode()
            if s.closed or s.busy or not self._kv.movable(s, at) or donor.num_computed < len(donor.tokens):
                return False
            self._place(s, at, new)
            self._kv.splice(s, donor, at, len(new))
            s.stats.prefill_computed += donor.stats.prefill_computed  # the fork's work was done for s
            return True
        finally:
            s.pinned_until = pinned
            await self.close(handle)

    def _place(self, s: LlamaSeq, at: int, new: list[int]) -> None:
        """Insert the token ids (not their KV) and move the positions the sequence remembers past `at`."""
        s.tokens[at:at] = new
        s.last_logits = None  # the next generation's logits must read the new tokens
        if s.sampled_pos is not None and s.sampled_pos >= at:
            s.sampled_pos += len(new)
        if s.recompute_until > at:
            s.recompute_until += len(new)

    async def score(self, seq: Sequence, tokens: Seq[int]) -> list[float]:
        """Log-probability of each of `tokens` after `seq`; computed on a fork, so `seq` is left unchanged."""
        s = self._table.get(seq)
        self._table.check_idle(s, "score")
        new = self._table.check_tokens(tokens, allow_empty=False)
        self._table.check_length(len(s.tokens) + len(new))
        t = await self._fork_sequence(s)
        first = s.last_logits
        if first is None and t.num_computed == len(t.tokens):
            self._kv.truncate(t, len(t.tokens) - 1)  # recompute the last token: its logits score tokens[0]
        t.logits_from = len(t.tokens) - (0 if first is not None else 1)
        t.tokens.extend(new[:-1])
        handle = self._table.add(t)
        try:
            if t.pending:
                await self._compute(t, rollback_to=len(s.tokens))
            rows = ([first] if first is not None else []) + t.scored
        finally:
            await self.close(handle)
        out = []
        for row, token in zip(rows, new, strict=True):
            logits = row.astype(np.float64)
            top = logits.max()
            out.append(float(logits[token] - top - math.log(np.exp(logits - top).sum())))
        return out

    def is_resident(self, seq: Sequence) -> bool:
        """Whether the sequence's KV is in the cache now (False once evicted, until it is used again)."""
        return self._table.get(seq).slot is not None

    def stats(self) -> EngineStats:
        """Engine-wide counters and gauges (a snapshot)."""
        per_cell = self._ctx.bytes_per_cell
        return self._stats(sum(1 for s in self._table if s.slot is not None), self._kv.live_cells() * per_cell,
                           self._kv.ledger.n_cells * per_cell)

    def drop_prefix_cache(self) -> None:
        """Free the KV that closed sequences keep as a prefix cache (only while no step runs)."""
        if self._decoding:
            raise EngineError("the prefix cache can only be dropped between steps")
        self._kv.drop_closed()

    async def shutdown(self) -> None:
        """Stop the engine loop and free the model; pending operations fail with EngineStoppedError."""
        if not await self._stop():
            return
        await self._out_of_decode()
        self._worker.shutdown(wait=True)
        self._ctx.close()
        torch_threads.release()

    # ---------------------------------------------------------------- waiting for the loop

    def _new_sequence(self, tokens: list[int], cache_salt: str | None) -> LlamaSeq:
        s = LlamaSeq(self._table.new_id(), tokens, cache_salt=cache_salt)
        self._kv.touch(s)  # its cached prefix is found when it first gets a slot
        return s

    async def _fork_sequence(self, p: LlamaSeq) -> LlamaSeq:
        await self._out_of_decode()
        s = LlamaSeq(self._table.new_id(), list(p.tokens))
        self._kv.fork(p, s, protect=set())
        s.sampled_pos, s.last_logits = p.sampled_pos, p.last_logits
        return s

    async def _release(self, s: LlamaSeq) -> None:
        await self._out_of_decode()
        self._kv.close(s)  # freed, or kept as a prefix cache until the cells are wanted

    async def _out_of_decode(self) -> None:
        """Return once no decode is in flight (llama.cpp memory may then be edited until the next await)."""
        while self._decoding:
            assert self._step_done is not None
            self._step_done.clear()
            await self._step_done.wait()

    # ---------------------------------------------------------------- the loop

    _yield_between_steps = True  # fork, close and score edit llama.cpp memory between decodes

    async def _forward(self, step: Step) -> list[np.ndarray]:
        batch = [t for c in step.chunks for t in c.tokens]
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._ctx.decode, batch)

    def _begin_step(self, step: Step) -> None:
        self._decoding = True

    def _end_step(self, step: Step) -> None:
        self._decoding = False

    def _undo_forward(self, step: Step) -> None:
        # Whatever the failed decode wrote past each chunk's start goes; the cells stay reserved for the rerun.
        for c in step.chunks:
            if c.seq.slot is not None:
                self._ctx.seq_rm(c.seq.slot, c.start)

    def _drop_uncomputed_kv(self, s: LlamaSeq) -> None:
        # Cells a failed stage wrote or reserved past what was taken in would clash with their recompute.
        self._kv.truncate(s, s.num_computed)

    def _output_after(self, step: Step, output: list[np.ndarray], i: int) -> list[np.ndarray]:
        return output[sum(c.n_logits for c in step.chunks[:i]):]

    def _sample_ready(self) -> None:
        # A generation that starts on a fully computed sequence samples from the stored logits: no decode.
        ready: list[tuple[LlamaSeq, SampleRequest]] = []
        for s in self._table:
            gen = s.generation
            if gen is None or gen.produced or s.pending:
                continue
            if s.last_logits is None:
                # Computed but without logits (a rolled-back append, a fork of one): recompute the last token.
                self._kv.truncate(s, len(s.tokens) - 1)
                continue
            ready.append((s, SampleRequest(gen, s.tokens, [torch.from_numpy(s.last_logits)])))
        self._sample_and_emit(ready)

    def _capacity_error(self, s: LlamaSeq) -> CapacityError:
        return CapacityError(f"sequence {s.id} needs {len(s.tokens)} tokens of KV but the budget holds "
                             f"{self._kv.ledger.n_cells} cells (or every slot is busy); close sequences or raise "
                             "kv_cells")

    def _forget_uncomputed(self, s: LlamaSeq) -> None:
        self._kv.index.unregister(s, keep_tokens=s.num_computed)

    def _update(self, step: Step, rows: list[np.ndarray]) -> None:
        """Take in a finished step: progress and counters, prefix index, waiters, sampled tokens, drafts."""
        it = iter(rows)
        ready: list[tuple[LlamaSeq, SampleRequest]] = []
        taken: list[Chunk] = []
        try:
            for c in self._chunks(step):
                s = c.seq
                taken.append(c)
                mine = [next(it) for _ in range(c.n_logits)]
                own = len(mine) - len(c.draft)  # rows of the chunk's tokens; the draft's follow
                self._count_computed(s, c.start, c.end, c.count)
                if s.closed:
                    continue  # closing drops every cell beyond what it keeps, the draft's too
                self._kv.index.register(s)
                if s.logits_from is not None:
                    s.scored.extend(mine[:own])
                self._wake_waiters(s)
                if c.ends_sequence and c.end == len(s.tokens):
                    s.last_logits = mine[own - 1]
                    gen = c.gen
                    if gen is not None and s.generation is gen:
                        after = [torch.from_numpy(r) for r in mine[own - 1:]]
                        ready.append((s, SampleRequest(gen, s.tokens, after, c.draft)))
        finally:
            # What was taken in before a fault (blamed on its chunk) still samples in one pass and drops its
            # rejected drafts; accepted draft tokens become computed as they are emitted (their KV is in place).
            self._sample_and_emit(ready)
            for c in taken:
                if c.draft and not c.seq.closed:
                    # The rejected draft tokens' KV goes from the first of them on, so later positions stay exact.
                    self._kv.truncate(c.seq, c.seq.num_computed)
                    self._kv.index.register(c.seq)

    def _fail_step(self, step: Step, exc: Exception) -> None:
        err = exc if isinstance(exc, EngineError) else EngineError(f"llama_decode failed: {exc}")
        for c in step.chunks:
            s = c.seq
            if s.slot is not None:
                self._kv.truncate(s, s.num_computed)  # the step's cells were not taken in
            self._fail_waiters(s, err)
            if s.generation is not None:
                s.generation.queue.put_nowait(err)
                s.generation = None
