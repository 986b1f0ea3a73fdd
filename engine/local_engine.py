"""What both embedded engines share: the protocol calls that only touch the sequence table, and generations.

A generation's life is the same whatever computes its tokens: sampling (a step's rows all together,
`_sample_and_emit`) hands each token to `_emit`, which checks it against the grammar, stop tokens, stop strings
and the budget, streams it and ends the generation; verified draft tokens (prompt lookup) and answers from the
response cache go through the same path. The subclasses own the KV (their `_kv` has `touch`) and how a step is
computed (`_forward`); the loop (engine/step_loop.py) is shared and survives its own faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from dataclasses import replace
from typing import Any

from .detokenizer import Detokenizer
from .errors import CapacityError, EngineError, SequenceClosedError, StepFailedError, UnsupportedFeatureError
from .generation import Generation, Waiter
from .protocol import EngineStats, FinishReason, SamplingParams, Sequence, SequenceStats, TokenDelta
from .response_cache import CachedResponse, ResponseCache
from .sampler import make_generator
from .sequence_table import SequenceTable
from .step_loop import StepLoop
from .step_sampling import SampleRequest, sample_step
from .structured_state import StructuredState, Structurer, structurer_for
from .token_stream import TokenStream

log = logging.getLogger(__name__)


class LocalEngine(StepLoop):
    """The shared half of TransformersEngine and LlamaCppEngine (see the module docstring)."""

    _table: SequenceTable[Any]
    _kv: Any  # the subclass's KV manager: `touch(s)` marks a sequence used
    _eos: frozenset[int]
    device: Any = "cpu"  # where sampling's random generator lives
    id: int
    _responses: ResponseCache | None = None
    _structurer: Structurer | None = None
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event | None = None
    _step_done: asyncio.Event | None = None
    _drafted = 0
    _draft_accepted = 0

    # Provided by the subclasses.
    tokenizer: Any
    model_name: str

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation unless SamplingParams.ignore_eos (the model's end-of-generation set)."""
        return self._eos

    @property
    def max_model_len(self) -> int:
        """Longest sequence: the model's context, capped by the KV budget where that is smaller."""
        return self._table.max_model_len

    async def open(self, tokens: Seq[int], parent: Sequence | None = None, *,
                   cache_salt: str | None = None) -> Sequence:
        """New sequence holding parent's tokens (shared, not copied or recomputed) followed by tokens.

        A sequence without parent starts on the longest cached prefix opened with the same cache_salt; a fork
        keeps its parent's salt.
        """
        table = self._table
        table.check_alive()
        new = table.check_tokens(tokens, allow_empty=parent is not None)
        if parent is None:
            s = self._new_sequence(new, cache_salt)
        else:
            p = table.get(parent)
            table.check_salt(cache_salt, p.cache_salt)
            table.check_idle(p, "fork")
            table.check_length(len(p.tokens) + len(new))
            s = await self._fork_sequence(p)
            s.tokens.extend(new)
            if new:
                s.last_logits = None  # the parent's last logits are not those after the new tokens
        handle = table.add(s)
        if new:
            try:
                await self._compute(s, rollback_to=0 if parent is None else len(s.tokens) - len(new))
            except BaseException:  # cancelled or failed: the caller never gets the handle, so nobody could close it
                await self.close(handle)
                raise
        return handle

    async def close(self, seq: Sequence) -> None:
        """Forget the sequence and free its KV (kept as prefix cache until the space is wanted); idempotent."""
        s = self._table.close(seq)
        if s is None:
            return
        if s.generation is not None:
            self._finish(s, s.generation, "abort")
        self._fail_waiters(s, SequenceClosedError(f"sequence {s.id} was closed"))
        await self._release(s)
        self._rouse()

    def _new_sequence(self, tokens: list[int], cache_salt: str | None) -> Any:
        """A sequence record for new tokens, not in the table yet, started on what the KV caches of them."""
        raise NotImplementedError

    async def _fork_sequence(self, parent: Any) -> Any:
        """A sequence record holding the parent's tokens and sharing its computed KV, not in the table yet."""
        raise NotImplementedError

    async def _release(self, s: Any) -> None:
        """Give a closed sequence's KV back, once no step in flight writes into it."""
        raise NotImplementedError

    def _before_generate(self, s: Any) -> None:
        """Make sure a generation starting on `s` will get logits (a hook; nothing to do by default)."""

    def _capacity_error(self, s: Any) -> CapacityError:
        raise NotImplementedError

    def _forget_uncomputed(self, s: Any) -> None:
        """Drop what the KV index knows of `s` beyond its computed tokens (they were just taken back)."""
        raise NotImplementedError

    def _sample_and_emit(self, requests: Seq[tuple[Any, SampleRequest]]) -> None:
        """Sample every (sequence, request) pair in one pass and emit what each drew (a draft's reproduced prefix,
        then its token); a failure fails only that generation."""
        if not requests:
            return
        for (s, req), out in zip(requests, sample_step([r for _, r in requests]), strict=True):
            if s.generation is not req.gen:
                continue  # it ended meanwhile
            if isinstance(out, Exception):
                self._fail_generation(s, req.gen, out)
            else:
                self._emit_verified(s, req.gen, len(req.draft), out.accepted, out.token)

    def _refuse(self, s: Any) -> None:
        """The sequence cannot get KV even if every other unpinned sequence gave its KV back (it alone is too big
        for the budget, or for what pinned ones leave once it waited pin_wait_s for them): end a generation that
        already wrote with "length", else fail it."""
        exc = self._refusal(s)
        if s.generation is not None and s.generation.produced > 0:
            log.warning("generation ended with 'length' before its limit: %s", exc)
            self._finish(s, s.generation, "length")
            return
        rollback = min((w.rollback_to for w in s.waiters), default=len(s.tokens))
        self._fail_waiters(s, exc)
        if s.generation is not None:
            s.generation.queue.put_nowait(exc)
            s.generation = None
        del s.tokens[max(rollback, s.num_computed):]
        self._forget_uncomputed(s)

    def _refusal(self, s: Any) -> CapacityError:
        """The engine's capacity error for `s`, naming the pinned sequences that keep KV out of its reach."""
        exc = self._capacity_error(s)
        pinned = [v.id for v in self._table if v.pinned and v.id != s.id]
        if not pinned:
            return exc
        wait = self._scheduler.preemption.pin_wait_s
        return CapacityError(f"{exc}; pinned sequences {pinned} keep their KV until unpinned or their TTL ends, "
                             f"longer than work may wait for them (pin_wait_s={wait:g})")

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model accepts."""
        return self._table.vocab_size

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

    @property
    def can_insert(self) -> bool:
        """False: this engine's cached keys cannot move (the llama.cpp engine's can)."""
        return False

    async def insert(self, seq: Sequence, at: int, tokens: Seq[int]) -> None:
        """Refused: this engine's cached keys cannot be moved to other positions (the llama.cpp engine's can)."""
        self._table.get(seq)
        raise UnsupportedFeatureError(f"{type(self).__name__} cannot insert tokens inside a sequence (its cached "
                                      "keys cannot move); use the llama.cpp engine or a layout that appends")

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
        if self._responses is not None:
            hit = self._responses.get(self.model_name, s.tokens, params, s.cache_salt)
            if hit is not None:
                # The exact request was answered before: its tokens join the sequence uncomputed (an append
                # computes them only if the conversation goes on) and the answer is sent at once.
                s.tokens.extend(hit.token_ids)
                s.last_logits = None
                gen.put(TokenDelta(hit.token_ids, hit.text, hit.finish_reason))
                return stream
            if params.greedy:
                gen.context, gen.sent = tuple(s.tokens), []
        if len(s.tokens) >= self.max_model_len:  # no room for one more token: end at once, like vLLM
            gen.queue.put_nowait(TokenDelta((), "", "length"))
            return stream
        self._before_generate(s)
        s.generation = gen
        self._kv.touch(s)
        self._kick()
        return stream

    async def abort(self, seq: Sequence) -> None:
        """Stop a running generation of this sequence (no-op if idle)."""
        s = self._table.get(seq)
        if s.generation is not None:
            self._finish(s, s.generation, "abort")

    async def pin(self, seq: Sequence, ttl: float | None = None) -> None:
        """Keep the sequence's KV resident for `ttl` seconds (None: until unpin); past the TTL it is evictable.

        Work that only pinned KV keeps out waits for the pin to end, at most the engine's `pin_wait_s`."""
        if ttl is not None and not ttl > 0:
            raise EngineError(f"pin ttl must be > 0 seconds or None, got {ttl!r}")
        self._table.get(seq).pinned_until = math.inf if ttl is None else time.monotonic() + ttl

    async def unpin(self, seq: Sequence) -> None:
        """Make the sequence evictable again (no-op if it was not pinned); work waiting for its KV goes on."""
        self._table.get(seq).pinned_until = None
        self._rouse()

    def tokens(self, seq: Sequence) -> list[int]:
        """A copy of the sequence's tokens (prompt, appends and generated)."""
        return self._table.tokens(seq)

    def seq_stats(self, seq: Sequence) -> SequenceStats:
        """What this sequence has cost so far."""
        return self._table.seq_stats(seq)

    def _structured_state(self, params: SamplingParams) -> StructuredState | None:
        """The grammar state of a structured generation; compiling here fails a bad schema before any compute."""
        if params.structured is None:
            return None
        if self._structurer is None:
            self._structurer = structurer_for(self.tokenizer, self.vocab_size, self._eos)
        return self._structurer.start(params.structured, params.structured_resume)

    def _stats(self, resident: int, kv_bytes_resident: int, kv_bytes_budget: int) -> EngineStats:
        """The engine-wide counters both local engines keep, with their KV's residency figures."""
        return replace(
            self._table.stats(), sequences_resident=resident, kv_bytes_resident=kv_bytes_resident,
            kv_bytes_budget=kv_bytes_budget, evictions=self._kv.evictions, forward_steps=self._forward_steps,
            draft_tokens=self._drafted, draft_accepted=self._draft_accepted,
            response_cache_hits=self._responses.stats.hits if self._responses else 0,
            preemptions=self._scheduler.preemption.count)

    async def _stop(self) -> bool:
        """Close every sequence and stop the engine loop; False if the engine was already stopped."""
        if self._table.stopped:
            return False
        for handle in self._table.stop():
            await self.close(handle)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return True

    def _rouse(self) -> None:
        """Wake the loop if work waits: KV just freed or unpinned may let it go on."""
        if not self._table.stopped and any(s.wants_compute for s in self._table):
            self._kick()

    def _kick(self) -> None:
        self._table.check_alive()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._step_done = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"moa-engine-{self.id}")
        assert self._wake is not None
        self._wake.set()

    async def _compute(self, s: Any, rollback_to: int) -> None:
        self._kv.touch(s)
        if s.pending == 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.waiters.append(Waiter(len(s.tokens), rollback_to, fut))
        self._kick()
        await fut

    def _count_computed(self, s: Any, start: int, end: int, count: int) -> None:
        """Take in a computed chunk [start, end) of `count` tokens: its counters (a sampled token computed in it is
        a decoded one, positions below `recompute_until` are recompute) and the sequence's progress."""
        decoded = 1 if s.sampled_pos is not None and start <= s.sampled_pos < end else 0
        if decoded:
            s.sampled_pos = None
        self._table.account(s, computed=count - decoded, decoded=decoded,
                            recomputed=max(0, min(end, s.recompute_until) - start))
        s.num_computed = end

    def _wake_waiters(self, s: Any) -> None:
        """Resolve the opens and appends whose tokens are all computed now."""
        for w in s.waiters:
            if w.target <= s.num_computed and not w.future.done():
                w.future.set_result(None)
        s.waiters = [w for w in s.waiters if w.target > s.num_computed]

    def _fail_waiters(self, s: Any, exc: BaseException) -> None:
        for w in s.waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        s.waiters.clear()

    def _cancel(self, s: Any, gen: Generation) -> None:
        if s.generation is gen:  # the consumer left early: stop decoding for it now
            s.generation = None
            self._kv.touch(s)

    def _finish(self, s: Any, gen: Generation, reason: FinishReason, text: str = "", token: int | None = None,
                flush: bool = True) -> None:
        tail = gen.detok.flush() if flush else ""
        ids = (token,) if token is not None else ()
        gen.put(TokenDelta(ids, text + tail, reason))
        if gen.sent is not None and gen.context is not None and self._responses is not None:
            out = tuple(t for d in gen.sent for t in d.token_ids)
            self._responses.put(self.model_name, gen.context, gen.params,
                                CachedResponse(out, "".join(d.text for d in gen.sent), reason), s.cache_salt)
        if s.generation is gen:
            s.generation = None
        self._kv.touch(s)

    def _emit_verified(self, s: Any, gen: Generation, drafted: int, accepted: list[int], token: int) -> None:
        """Emit a step's draft tokens that sampling reproduced (their KV is computed already), then its sample."""
        self._drafted += drafted
        self._draft_accepted += len(accepted)
        for draft_token in accepted:
            self._emit(s, gen, draft_token)
            s.num_computed, s.sampled_pos = s.num_computed + 1, None
            self._table.account(s, decoded=1)
            if s.generation is not gen:  # it ended (stop, length): the rest of the draft is dropped
                return
        self._emit(s, gen, token)

    def _emit(self, s: Any, gen: Generation, token: int) -> None:
        """Hand a sampled token to its generation; a failure (detokenizer, grammar) fails only this generation."""
        try:
            self._put_token(s, gen, token)
        except Exception as exc:
            self._fail_generation(s, gen, StepFailedError(
                f"emitting token {token} of sequence {s.id} failed: {type(exc).__name__}: {exc}; the engine goes "
                "on (this is a bug: please report it), retry the request"))

    def _put_token(self, s: Any, gen: Generation, token: int) -> None:
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
            gen.put(TokenDelta((token,), text))
            self._kv.touch(s)

    def _fail_generation(self, s: Any, gen: Generation, exc: Exception) -> None:
        log.warning("generation on sequence %d failed: %s", s.id, exc)
        err = exc if isinstance(exc, EngineError) else StepFailedError(
            f"sampling failed for sequence {s.id}: {type(exc).__name__}: {exc}; check the sampling parameters (the "
            "engine goes on)")
        gen.queue.put_nowait(err)
        if s.generation is gen:
            s.generation = None
        self._kv.touch(s)
