"""Exact-repeat answers: the same model, context tokens and greedy sampling give the stored output, no compute.

Only greedy requests are cached (a sampled one must draw afresh), keyed by a SHA-256 of the context's tokens
and the sequence's cache salt, with the full sampling parameters, so a different stop string, budget or grammar
is a different entry, and one tenant's answer is never served to (nor timed by) another.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import EngineError
from .protocol import FinishReason, SamplingParams


@dataclass(frozen=True)
class CachedResponse:
    """What a generation produced: its tokens, text and why it ended."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason


@dataclass
class ResponseCacheStats:
    """Lookups that hit, missed, or were not cacheable (sampled), and entries stored."""

    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    entries: int = 0


class ResponseCache:
    """A bounded LRU map from (model, context tokens, greedy params) to the response they gave."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise EngineError(f"a response cache needs max_entries >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.stats = ResponseCacheStats()
        self._entries: OrderedDict[tuple[str, bytes, SamplingParams], CachedResponse] = OrderedDict()

    @staticmethod
    def _key(model: str, tokens: Sequence[int], params: SamplingParams,
             salt: str | None) -> tuple[str, bytes, SamplingParams]:
        h = hashlib.sha256()
        salt_bytes = salt.encode() if salt is not None else b""  # length-prefixed: no salt/token ambiguity
        h.update(bytes([salt is not None]) + len(salt_bytes).to_bytes(4, "little") + salt_bytes)
        h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
        return model, h.digest(), params

    def get(self, model: str, tokens: Sequence[int], params: SamplingParams,
            salt: str | None = None) -> CachedResponse | None:
        """The stored response for this exact request of this tenant (salt), or None (counted as hit, miss or
        uncacheable)."""
        if not params.greedy:
            self.stats.uncacheable += 1
            return None
        key = self._key(model, tokens, params, salt)
        found = self._entries.get(key)
        if found is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return found

    def put(self, model: str, tokens: Sequence[int], params: SamplingParams, response: CachedResponse,
            salt: str | None = None) -> None:
        """Store a finished greedy response of this tenant (aborted ones are not answers and are skipped)."""
        if not params.greedy or response.finish_reason == "abort":
            return
        key = self._key(model, tokens, params, salt)
        self._entries[key] = response
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self.stats.entries = len(self._entries)
