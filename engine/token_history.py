"""A generation's token history as the penalties read it, kept up to date one token at a time.

The repetition penalty reads the set of tokens in the whole context, the frequency and presence penalties the
count of each token this generation produced. Rebuilding either from the context every token costs O(context)
Python per token; here they are built once when the generation first samples and grown by each new token, and
handed to the sampler as small index tensors (unique ids, and ids with their counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class _Growing:
    """A 1-D CPU tensor that grows by appending (amortised O(1) per element)."""

    def __init__(self, dtype: torch.dtype, values: Sequence[int | float] = ()) -> None:
        # Normal tensors even when built inside inference mode (a model runner's step): they are grown later.
        with torch.inference_mode(False):
            self._buf = torch.empty(max(64, 2 * len(values)), dtype=dtype)
            self._buf[: len(values)] = torch.tensor(list(values), dtype=dtype)
        self.n = len(values)

    def append(self, value: int | float) -> None:
        if self.n == len(self._buf):
            with torch.inference_mode(False):
                self._buf = torch.cat([self._buf, torch.empty_like(self._buf)])
        self._buf[self.n] = value
        self.n += 1

    def add_at(self, i: int, value: float) -> None:
        self._buf[i] += value

    @property
    def view(self) -> torch.Tensor:
        return self._buf[: self.n]


class TokenHistory:
    """The context's distinct tokens and the counts of the generated ones, for `len(tokens)` tokens so far."""

    def __init__(self, context: Sequence[int], generated: int) -> None:
        split = len(context) - generated
        self.length = len(context)
        self._seen: dict[int, None] = dict.fromkeys(context)  # insertion-ordered distinct context tokens
        self._context_ids = _Growing(torch.long, list(self._seen))
        counts: dict[int, int] = {}
        for t in context[split:]:
            counts[t] = counts.get(t, 0) + 1
        self._slot = {t: i for i, t in enumerate(counts)}
        self._gen_ids = _Growing(torch.long, list(counts))
        self._gen_counts = _Growing(torch.float32, list(counts.values()))

    def push(self, token: int) -> None:
        """Take in one generated token (appended to the context)."""
        self.length += 1
        if token not in self._seen:
            self._seen[token] = None
            self._context_ids.append(token)
        slot = self._slot.get(token)
        if slot is None:
            self._slot[token] = self._gen_ids.n
            self._gen_ids.append(token)
            self._gen_counts.append(1.0)
        else:
            self._gen_counts.add_at(slot, 1.0)

    def sync(self, tokens: Sequence[int]) -> None:
        """Take in the tokens appended since the history last saw `tokens` (the sequence only grows meanwhile)."""
        for t in tokens[self.length:]:
            self.push(t)

    def context_ids(self, extra: Sequence[int] = ()) -> torch.Tensor:
        """Distinct token ids of the context followed by `extra` (a draft's tokens, not taken in)."""
        ids = self._context_ids.view
        new = [t for t in dict.fromkeys(extra) if t not in self._seen]
        return torch.cat([ids, torch.tensor(new, dtype=torch.long)]) if new else ids

    def generated_counts(self, extra: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct generated token ids (then `extra`'s) and how often each was generated."""
        ids, counts = self._gen_ids.view, self._gen_counts.view
        if not extra:
            return ids, counts
        counts = counts.clone()
        new: dict[int, float] = {}
        for t in extra:
            slot = self._slot.get(t)
            if slot is not None:
                counts[slot] += 1.0
            else:
                new[t] = new.get(t, 0.0) + 1.0
        if new:
            ids = torch.cat([ids, torch.tensor(list(new), dtype=torch.long)])
            counts = torch.cat([counts, torch.tensor(list(new.values()), dtype=torch.float32)])
        return ids, counts
