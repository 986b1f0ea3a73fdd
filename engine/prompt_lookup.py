"""Prompt-lookup drafts: guess the next tokens by finding the sequence's latest n-gram earlier in itself.

Tool calls and structured output repeat what the context already holds (names, paths, argument values), so
the tokens that followed an earlier occurrence of the last n tokens are a cheap, often right guess (the
n-gram proposer of vLLM and transformers' `prompt_lookup_num_tokens`). The engine verifies a draft in the same
forward pass as the rest of the step and keeps only what its own sampling would have produced.

Both local engines use the two halves here: `PromptLookup.propose` picks a generation's draft when its step is
scheduled, `engine.step_sampling` samples and walks the logits rows the step returned for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .generation import Generation
from .step_sampling import SampleRequest, sample_step

__all__ = ["PromptLookup", "verify_draft"]


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
        found = self._match(tokens) if k > 0 else None
        return [] if found is None else list(tokens[found[0]:found[0] + k])

    def _match(self, tokens: Sequence[int]) -> tuple[int, int] | None:
        """Where the continuation of the latest earlier match of the longest matching suffix starts, and for how
        many tokens (up to max_draft) the text before it equals the text before the end."""
        n_tokens = len(tokens)
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            suffix = list(tokens[n_tokens - n:])
            # The latest occurrence wins: recent context predicts the continuation best.
            for start in range(n_tokens - n - 1, -1, -1):
                if tokens[start] == suffix[0] and list(tokens[start:start + n]) == suffix:
                    run = n
                    while run < self.max_draft and start > run - n and tokens[start + n - 1 - run] == \
                            tokens[n_tokens - 1 - run]:
                        run += 1
                    return start + n, run
        return None

    def propose(self, tokens: Sequence[int], gen: Generation, room: int, max_model_len: int,
                stop_ids: frozenset[int]) -> tuple[int, ...]:
        """A draft for a greedy generation (sampled ones draw afresh), cut before any stop token.

        `room` is what the step's token budget has left after the generation's own token. The draft is at most
        as long as the run of text the match stands on: a fresh two-token match is a weak guess, a long copy a
        strong one. Where a decode costs about what its tokens do (a loaded CPU), a long guess on a short match
        mostly computes tokens that are thrown away.
        """
        if not gen.params.greedy:
            return ()
        # The token sampled now is one of the budget; a draft fills at most what is left of it and of the context.
        limit = min(room, gen.params.max_tokens - gen.produced - 1, max_model_len - len(tokens) - 1)
        found = self._match(tokens) if limit > 0 else None
        if found is None:
            return ()
        start, run = found
        draft = tokens[start:start + min(limit, run)]
        stops = stop_ids | set(gen.params.stop_token_ids)
        cut = next((i for i, t in enumerate(draft) if t in stops), len(draft))
        return tuple(draft[:cut])


def verify_draft(rows: torch.Tensor, draft: Sequence[int], gen: Generation,
                 tokens: Sequence[int]) -> tuple[list[int], int]:
    """Sample after each draft token (`rows[i]`: logits after draft[i-1], row 0 after `tokens`) and keep the
    draft's prefix that sampling reproduced, then the token drawn after it: exactly the tokens one-at-a-time
    decoding would have produced (greedy), computed in one pass. The grammar state is left where it was: the
    engine accepts the tokens again as it emits them. (The engines sample a whole step's drafts together
    through `sample_step`; this is one draft alone.)
    """
    out = sample_step([SampleRequest(gen, tokens, list(rows[:len(draft) + 1]), tuple(draft))])[0]
    if isinstance(out, Exception):
        raise out
    return out.accepted, out.token
