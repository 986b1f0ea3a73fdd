"""Sequences kept on the client as token lists, for engines whose KV lives elsewhere (HTTP servers, vLLM).

Such an engine cannot hold KV per sequence; it re-sends each sequence's whole history and relies on the
backend's prefix cache. Because histories only grow at the end, every request's prompt extends the last one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidTokensError, UnsupportedFeatureError
from ..protocol import EngineStats, SamplingParams, Sequence, SequenceStats, Tokenizer
from ..sequence_table import SequenceEntry, SequenceTable


@dataclass
class ClientSeq(SequenceEntry):
    """One sequence: its token history, its cost, and the request streaming now (if any)."""

    generating: bool = False
    cache_salt: str | None = None  # sent with each request so only same-salt requests share the backend's cache
    cancel: Callable[[], Awaitable[None]] | None = None  # what close() and abort() call to cut the request

    @property
    def busy(self) -> bool:
        """Whether a request is streaming for it."""
        return self.generating


class ClientSequences:
    """open/append/fork/abort/close/tokens/stats for engines that keep sequences as client-side token lists."""

    def __init__(self, tokenizer: Any, eos_token_ids: frozenset[int], vocab_size: int, max_model_len: int,
                 model_name: str) -> None:
        self._tok = tokenizer
        self._eos = eos_token_ids
        self._model_name = model_name
        self._table: SequenceTable[ClientSeq] = SequenceTable(
            vocab_size, max_model_len, " (set the backend option max_model_len to the backend's context size)")
        self.id = self._table.engine_id

    @property
    def tokenizer(self) -> Tokenizer:
        """The Hugging Face tokenizer of the model (the client tokenizes; the backend computes)."""
        return self._tok

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        return self._eos

    @property
    def max_model_len(self) -> int:
        """Longest sequence accepted."""
        return self._table.max_model_len

    @property
    def vocab_size(self) -> int:
        """Number of token ids accepted."""
        return self._table.vocab_size

    @property
    def model_name(self) -> str:
        """The model the backend serves, as configured (or as the server named it)."""
        return self._model_name

    async def open(self, tokens: Seq[int], parent: Sequence | None = None, *,
                   cache_salt: str | None = None) -> Sequence:
        """New sequence (parent's tokens, then these); computes nothing until generate. A fork keeps its salt."""
        self._table.check_alive()
        new = self._table.check_tokens(tokens, allow_empty=parent is not None)
        base: list[int] = []
        if parent is not None:
            p = self._table.get(parent)
            self._table.check_salt(cache_salt, p.cache_salt)
            self._table.check_idle(p, "fork")
            base = list(p.tokens)
            cache_salt = p.cache_salt
        self._table.check_length(len(base) + len(new))
        return self._table.add(ClientSeq(self._table.new_id(), base + new, cache_salt=cache_salt))

    async def append(self, seq: Sequence, tokens: Seq[int]) -> None:
        """Extend the sequence's history; the backend computes the new tokens on the next request."""
        s = self._table.get(seq)
        self._table.check_idle(s, "append to")
        new = self._table.check_tokens(tokens, allow_empty=False)
        self._table.check_length(len(s.tokens) + len(new))
        s.tokens.extend(new)

    async def fork(self, seq: Sequence) -> Sequence:
        """A copy of the sequence; the backend's prefix cache shares the KV."""
        return await self.open([], parent=seq)

    async def abort(self, seq: Sequence) -> None:
        """Cut the sequence's running request (no-op if idle)."""
        s = self._table.get(seq)
        if s.cancel is not None:
            await s.cancel()

    async def close(self, seq: Sequence) -> None:
        """Forget the sequence, cutting its request if one is running; idempotent."""
        s = self._table.close(seq)
        if s is not None and s.cancel is not None:
            await s.cancel()

    async def pin(self, seq: Sequence, ttl: float | None = None) -> None:
        """No-op: a remote sequence is a client-side token list the server may cache but we cannot pin."""
        self._table.get(seq)

    async def unpin(self, seq: Sequence) -> None:
        """No-op, as pin."""
        self._table.get(seq)

    async def score(self, seq: Sequence, tokens: Seq[int]) -> list[float]:
        """Not available: remote servers do not return prompt log-probabilities through this client."""
        raise UnsupportedFeatureError(
            f"{type(self).__name__} cannot score tokens; use a local engine (transformers or llamacpp) for "
            "log-likelihood scoring")

    @property
    def can_insert(self) -> bool:
        """False: a remote server's cached KV cannot be moved from here."""
        return False

    async def insert(self, seq: Sequence, at: int, tokens: Seq[int]) -> None:
        """Not available: a remote server's cached KV cannot be moved from here."""
        self._table.get(seq)
        raise UnsupportedFeatureError(f"{type(self).__name__} cannot insert tokens inside a sequence; use the "
                                      "llama.cpp engine or a layout that appends")

    def tokens(self, seq: Sequence) -> list[int]:
        """A copy of the sequence's tokens (prompt, appends and generated)."""
        return self._table.tokens(seq)

    def seq_stats(self, seq: Sequence) -> SequenceStats:
        """What this sequence cost on the backend (reused tokens only where the backend reports them)."""
        return self._table.seq_stats(seq)

    def stats(self) -> EngineStats:
        """Engine-wide counters; KV lives in the backend, so the KV gauges stay 0."""
        return self._table.stats()

    async def _close_all(self) -> None:
        for handle in self._table.stop():
            await self.close(handle)

    # ---------------------------------------------------------------- helpers for subclasses

    def _start(self, seq: Sequence, params: SamplingParams) -> ClientSeq:
        """The sequence, marked generating (raises if it cannot generate now or the params name bad ids)."""
        s = self._table.get(seq)
        self._table.check_idle(s, "generate on")
        self._table.check_sampling(params)
        if not s.tokens:
            raise InvalidTokensError(f"sequence {s.id} is empty: append a prompt before generating")
        s.generating = True
        return s

    def _account(self, s: ClientSeq, computed: int, reused: int, decoded: int) -> None:
        self._table.account(s, computed, reused, decoded)
