"""Sequences kept on the client as token lists, for engines whose KV lives elsewhere (HTTP servers, vLLM).

Such an engine cannot hold KV per sequence; it re-sends each sequence's whole history and relies on the
backend's prefix cache. Because histories only grow at the end, every request's prompt extends the last one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    EngineStoppedError,
    InvalidTokensError,
    SequenceBusyError,
    SequenceClosedError,
    UnknownSequenceError,
)
from .protocol import EngineStats, Sequence, SequenceStats

_engine_ids = itertools.count(1_000_001)  # far from TransformersEngine ids, so handles never collide


@dataclass
class ClientSeq:
    """One sequence: its token history, its cost, and the request streaming now (if any)."""

    id: int
    tokens: list[int]
    stats: SequenceStats = field(default_factory=SequenceStats)
    busy: bool = False
    closed: bool = False
    cancel: Any = None  # what close() calls to cut the running request (an async callable)


class ClientSequences:
    """open/append/fork/close/tokens/stats for engines that keep sequences as client-side token lists."""

    def __init__(self, vocab_size: int, max_model_len: int) -> None:
        self.id = next(_engine_ids)
        self._vocab = vocab_size
        self._max_len = max_model_len
        self._seqs: dict[int, ClientSeq] = {}
        self._next_id = 1
        self._stats = EngineStats()
        self._stopped = False

    # Subclasses set these before calling __init__: the tokenizer the client encodes with, and its stop ids.
    _tok: Any
    _eos: frozenset[int]

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the model (the client tokenizes; the backend computes)."""
        return self._tok

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        return self._eos

    @property
    def max_model_len(self) -> int:
        """Longest sequence accepted."""
        return self._max_len

    async def open(self, tokens: Seq[int], parent: Sequence | None = None) -> Sequence:
        """New sequence (parent's tokens, then these); computes nothing until generate."""
        self._check_alive()
        new = self._check_tokens(tokens, allow_empty=parent is not None)
        base: list[int] = []
        if parent is not None:
            p = self._get(parent)
            if p.busy:
                raise SequenceBusyError(f"cannot fork sequence {p.id} while it is generating; wait or abort it")
            base = list(p.tokens)
        self._check_length(len(base) + len(new))
        s = ClientSeq(self._next_id, base + new)
        self._next_id += 1
        self._seqs[s.id] = s
        self._stats.sequences_open += 1
        return Sequence(s.id, self.id)

    async def append(self, seq: Sequence, tokens: Seq[int]) -> None:
        """Extend the sequence's history; the backend computes the new tokens on the next request."""
        s = self._get(seq)
        if s.busy:
            raise SequenceBusyError(f"cannot append to sequence {s.id} while it is generating; wait or abort it")
        new = self._check_tokens(tokens, allow_empty=False)
        self._check_length(len(s.tokens) + len(new))
        s.tokens.extend(new)

    async def fork(self, seq: Sequence) -> Sequence:
        """A copy of the sequence; the backend's prefix cache shares the KV."""
        return await self.open([], parent=seq)

    async def abort(self, seq: Sequence) -> None:
        """Cut the sequence's running request (no-op if idle)."""
        s = self._get(seq)
        if s.cancel is not None:
            await s.cancel()

    async def close(self, seq: Sequence) -> None:
        """Forget the sequence, cutting its request if one is running; idempotent."""
        s = self._seqs.get(seq.id) if seq.engine_id == self.id else None
        if s is None or s.closed:
            return
        s.closed = True
        del self._seqs[s.id]
        self._stats.sequences_open -= 1
        if s.cancel is not None:
            await s.cancel()

    def tokens(self, seq: Sequence) -> list[int]:
        """A copy of the sequence's tokens (prompt, appends and generated)."""
        return list(self._get(seq).tokens)

    def seq_stats(self, seq: Sequence) -> SequenceStats:
        """What this sequence cost on the backend (reused tokens only where the backend reports them)."""
        st = self._get(seq).stats
        return SequenceStats(st.prefill_computed, st.prefill_reused, st.decode_tokens, st.recomputed_after_eviction)

    def stats(self) -> EngineStats:
        """Engine-wide counters; KV lives in the backend, so the KV gauges stay 0."""
        st = self._stats
        return EngineStats(prefill_computed=st.prefill_computed, prefill_reused=st.prefill_reused,
                           decode_tokens=st.decode_tokens, sequences_open=st.sequences_open)

    async def _close_all(self) -> None:
        self._stopped = True
        for s in list(self._seqs.values()):
            await self.close(Sequence(s.id, self.id))

    # ---------------------------------------------------------------- helpers for subclasses

    def _start(self, seq: Sequence) -> ClientSeq:
        """The sequence, marked busy for a generation (raises if it cannot generate now)."""
        s = self._get(seq)
        if s.busy:
            raise SequenceBusyError(f"sequence {s.id} is already generating; wait for it or abort it")
        if not s.tokens:
            raise InvalidTokensError(f"sequence {s.id} is empty: append a prompt before generating")
        s.busy = True
        return s

    def _account(self, s: ClientSeq, computed: int, reused: int, decoded: int) -> None:
        for st in (s.stats, self._stats):
            st.prefill_computed += computed
            st.prefill_reused += reused
            st.decode_tokens += decoded

    def _check_alive(self) -> None:
        if self._stopped:
            raise EngineStoppedError("the engine was shut down; create a new one")

    def _get(self, seq: Sequence) -> ClientSeq:
        self._check_alive()
        if not isinstance(seq, Sequence):
            raise UnknownSequenceError(f"expected an engine.Sequence handle, got {type(seq).__name__}")
        if seq.engine_id != self.id:
            raise UnknownSequenceError(f"sequence {seq.id} belongs to another engine")
        s = self._seqs.get(seq.id)
        if s is None:
            if 0 < seq.id < self._next_id:
                raise SequenceClosedError(f"sequence {seq.id} was closed; open a new one")
            raise UnknownSequenceError(f"no sequence {seq.id} in this engine")
        return s

    def _check_tokens(self, tokens: Seq[int], allow_empty: bool) -> list[int]:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Seq):
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
            raise InvalidTokensError(f"sequence of {n} tokens exceeds max_model_len={self._max_len} "
                                     "(set the backend option max_model_len to the backend's context size)")
