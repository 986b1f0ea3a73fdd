"""Sample a step's generations together: one batched pass over every row, then each draft's verified prefix.

A generation brings the logits after its sequence's last token and, when the step verified a prompt-lookup
draft, one more row after each draft token. Row i is only used if the draft's first i tokens were drawn, so it
is sampled as if they had been (the penalties count them, the grammar mask is taken after them) and all the
rows of all generations go through `sample_rows` at once; the walk afterwards keeps the draft's prefix that
sampling reproduced: exactly what one-token-at-a-time decoding would have produced (greedy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .generation import Generation
from .sampler import Row, sample_rows
from .token_history import TokenHistory


@dataclass(frozen=True)
class SampleRequest:
    """A generation's rows in a step: logits after `tokens` (its sequence), then one after each draft token."""

    gen: Generation
    tokens: Sequence[int]
    rows: Sequence[torch.Tensor]  # 1-D logits rows, 1 + len(draft) of them
    draft: tuple[int, ...] = ()


@dataclass(frozen=True)
class Drawn:
    """What sampling gave a generation: the draft tokens it reproduced, then the token it drew after them."""

    accepted: list[int]
    token: int


def history_of(gen: Generation, tokens: Sequence[int]) -> TokenHistory | None:
    """The generation's penalty history, brought up to `tokens` (built on first use; None without penalties)."""
    if not gen.params.penalized:
        return None
    if gen.history is None or gen.history.length > len(tokens):
        gen.history = TokenHistory(tokens, gen.produced)
    else:
        gen.history.sync(tokens)
    return gen.history


def sample_step(requests: Sequence[SampleRequest]) -> list[Drawn | Exception]:
    """Each request's draw, all sampled in one pass; a request that fails gets its error (the engine fails that
    generation alone, naming it), the others their draw."""
    if not requests:
        return []
    rows: list[Row] = []
    for r in requests:
        if len(r.rows) != len(r.draft) + 1:
            raise ValueError(f"a draft of {len(r.draft)} tokens needs {len(r.draft) + 1} logits rows, "
                             f"got {len(r.rows)}")
        g = r.gen
        history = history_of(g, r.tokens)
        rows.extend(Row(g.params, g.generator, history, g.structured, r.draft[:i]) for i in range(len(r.rows)))
    logits = torch.stack([row for r in requests for row in r.rows]).float()
    try:
        out = sample_rows(logits, rows)
    except Exception as exc:  # find whose rows failed: each request alone, so the others still get their draw
        if len(requests) == 1:
            return [exc]
        return [d for r in requests for d in sample_step([r])]
    drawn: list[Drawn | Exception] = []
    at = 0
    for r in requests:
        mine, at = out[at:at + len(r.rows)], at + len(r.rows)
        drawn.append(_walk(mine, r.draft))
    return drawn


def _walk(tokens: list[int | Exception], draft: tuple[int, ...]) -> Drawn | Exception:
    accepted: list[int] = []
    for i, token in enumerate(tokens):
        if isinstance(token, Exception):
            return token
        if i == len(draft) or token != draft[i]:
            return Drawn(accepted, token)
        accepted.append(token)
    raise AssertionError("unreachable: the last row always ends the walk")
