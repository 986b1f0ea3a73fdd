"""The open sequences of one engine, local or remote: handle validation, token checks and cost counters.

Every engine (the embedded one and the remote ones) keeps its sequences in a SequenceTable, so a handle is
checked, a closed sequence told apart from an unknown one, and a sequence's cost counted the same way
everywhere. Engine ids come from one counter, so a handle of one engine is never taken for another's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from .errors import (
    ContextLengthError,
    EngineError,
    EngineStoppedError,
    InvalidSamplingError,
    InvalidTokensError,
    SequenceBusyError,
    SequenceClosedError,
    UnknownSequenceError,
)
from .protocol import EngineStats, SamplingParams, Sequence, SequenceStats

_engine_ids = itertools.count(1)


@dataclass
class SequenceEntry:
    """What every engine keeps for a sequence: its id, its tokens, what it cost and whether it was closed."""

    id: int
    tokens: list[int]
    stats: SequenceStats = field(default_factory=SequenceStats)
    closed: bool = False

    @property
    def busy(self) -> bool:
        """Whether a generation is running on it (then it cannot be appended to, forked or generated on)."""
        raise NotImplementedError


E = TypeVar("E", bound=SequenceEntry)


class SequenceTable(Generic[E]):
    """One engine's open sequences by id, with the checks and counters every engine shares."""

    def __init__(self, vocab_size: int, max_model_len: int, length_hint: str = "") -> None:
        self.engine_id = next(_engine_ids)
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self._length_hint = length_hint  # what to do about a too-long sequence, appended to the error
        self._entries: dict[int, E] = {}
        self._next_id = 1
        self._totals = SequenceStats()
        self.stopped = False

    def __iter__(self) -> Iterator[E]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    # ---------------------------------------------------------------- open, look up, close

    def new_id(self) -> int:
        """A sequence id never used before in this engine."""
        self._next_id += 1
        return self._next_id - 1

    def add(self, entry: E) -> Sequence:
        """Enter an opened sequence; returns its handle."""
        self._entries[entry.id] = entry
        return Sequence(entry.id, self.engine_id)

    def get(self, seq: Sequence) -> E:
        """The open sequence behind a handle; raises a typed error naming what is wrong with the handle."""
        self.check_alive()
        if not isinstance(seq, Sequence):
            raise UnknownSequenceError(f"expected an engine.Sequence handle, got {type(seq).__name__}")
        if seq.engine_id != self.engine_id:
            raise UnknownSequenceError(f"sequence {seq.id} belongs to another engine")
        entry = self._entries.get(seq.id)
        if entry is None:
            if 0 < seq.id < self._next_id:
                raise SequenceClosedError(f"sequence {seq.id} was closed; open a new one")
            raise UnknownSequenceError(f"no sequence {seq.id} in this engine")
        return entry

    def close(self, seq: Sequence) -> E | None:
        """Mark the sequence closed and forget it; None if it is not open here (closing twice is fine)."""
        entry = self._entries.get(seq.id) if seq.engine_id == self.engine_id else None
        if entry is None or entry.closed:
            return None
        entry.closed = True
        del self._entries[entry.id]
        return entry

    def stop(self) -> list[Sequence]:
        """Refuse every further call; returns the handles of the sequences still open, for the engine to close."""
        self.stopped = True
        return [Sequence(e.id, self.engine_id) for e in self._entries.values()]

    # ---------------------------------------------------------------- checks

    def check_alive(self) -> None:
        """Raise EngineStoppedError once the engine was shut down."""
        if self.stopped:
            raise EngineStoppedError("the engine was shut down; create a new one")

    def check_idle(self, entry: E, what: str) -> None:
        """Raise SequenceBusyError if the sequence is generating; `what` names the refused operation."""
        if entry.busy:
            raise SequenceBusyError(f"cannot {what} sequence {entry.id} while it is generating; abort it or wait")

    def check_tokens(self, tokens: Seq[int] | Any, allow_empty: bool) -> list[int]:
        """The token ids as a list of ints; raises InvalidTokensError for non-lists, empty lists, bad ids."""
        if hasattr(tokens, "tolist") and not isinstance(tokens, (str, bytes)):
            tokens = tokens.tolist()  # a tensor or array of ids
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Seq):
            raise InvalidTokensError(f"tokens must be a list of token ids, got {type(tokens).__name__}")
        out = [int(t) for t in tokens]
        if not out and not allow_empty:
            raise InvalidTokensError("token list is empty: pass at least one token id")
        bad = [t for t in out if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidTokensError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        self.check_length(len(out))
        return out

    def check_length(self, n: int) -> None:
        """Raise ContextLengthError if a sequence of n tokens would not fit the model."""
        if n > self.max_model_len:
            raise ContextLengthError(f"sequence of {n} tokens exceeds max_model_len={self.max_model_len} "
                                     f"by {n - self.max_model_len}{self._length_hint}")

    def check_sampling(self, params: SamplingParams) -> None:
        """Raise InvalidSamplingError naming the field if a token id in the params is outside the vocabulary."""
        for name in ("banned_token_ids", "stop_token_ids"):
            bad = [t for t in getattr(params, name) if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidSamplingError(f"{name} {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

    @staticmethod
    def check_salt(given: str | None, parent: str | None) -> None:
        """Raise EngineError if a fork asks for another cache salt than its parent's (it shares the parent's KV)."""
        if given is not None and given != parent:
            raise EngineError("a fork shares its parent's KV and keeps its cache_salt; pass no cache_salt")

    # ---------------------------------------------------------------- what sequences cost

    def account(self, entry: E, computed: int = 0, reused: int = 0, decoded: int = 0, evicted: int = 0,
                recomputed: int = 0) -> None:
        """Count tokens against one sequence and the engine: prefill computed, prefill reused, decoded, KV given
        back (evicted or preempted), computed again after that."""
        for st in (entry.stats, self._totals):
            st.prefill_computed += computed
            st.prefill_reused += reused
            st.decode_tokens += decoded
            st.evicted_tokens += evicted
            st.recomputed_after_eviction += recomputed

    def seq_stats(self, seq: Sequence) -> SequenceStats:
        """A copy of what this sequence has cost so far."""
        return replace(self.get(seq).stats)

    def tokens(self, seq: Sequence) -> list[int]:
        """A copy of the sequence's tokens."""
        return list(self.get(seq).tokens)

    def stats(self) -> EngineStats:
        """The engine-wide token counters and open sequences (engines add their own gauges)."""
        t = self._totals
        return EngineStats(prefill_computed=t.prefill_computed, prefill_reused=t.prefill_reused,
                           decode_tokens=t.decode_tokens, sequences_open=len(self._entries),
                           evicted_tokens=t.evicted_tokens, recomputed_after_eviction=t.recomputed_after_eviction)
