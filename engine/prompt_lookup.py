"""Prompt-lookup drafts: guess the next tokens by finding the sequence's latest n-gram earlier in itself.

Tool calls and structured output repeat what the context already holds (names, paths, argument values), so
the tokens that followed an earlier occurrence of the last n tokens are a cheap, often right guess (the
n-gram proposer of vLLM and transformers' `prompt_lookup_num_tokens`). The engine verifies a draft in the same
forward pass as the rest of the step and keeps only what its own sampling would have produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptLookup:
    """Drafts up to `max_draft` tokens by matching the last `max_ngram`..`min_ngram` tokens earlier on."""

    max_draft: int = 8
    max_ngram: int = 4
    min_ngram: int = 2

    def __post_init__(self) -> None:
        if self.max_draft < 1 or not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"prompt lookup needs max_draft >= 1 and 1 <= min_ngram <= max_ngram, got {self}")

    def draft(self, tokens: Sequence[int], limit: int | None = None) -> list[int]:
        """Tokens that followed the latest earlier match of the longest matching suffix ([] if none)."""
        k = self.max_draft if limit is None else min(self.max_draft, limit)
        n_tokens = len(tokens)
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            suffix = list(tokens[n_tokens - n:])
            # The latest occurrence wins: recent context predicts the continuation best.
            for start in range(n_tokens - n - 1, -1, -1):
                if tokens[start] == suffix[0] and list(tokens[start:start + n]) == suffix:
                    follow = list(tokens[start + n:start + n + k])
                    if follow:
                        return follow
        return []
