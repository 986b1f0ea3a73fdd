"""The per-row sampler the engine had before the batched one (issue 21), kept as the tests' oracle.

It is the old `engine/sampler.py` `sample` up to the draw, verbatim in what it computes: the structured mask
and banned tokens, `apply_penalties` from the raw context, temperature, top-k, top-p by a full sort, min-p.
It returns the distribution it would draw from (greedy: None and the argmax), so the batched sampler can be
checked against it row by row; the draw itself is `inverse_cdf` of one uniform, as the batched sampler draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.protocol import SamplingParams
from engine.structured_state import StructuredState


def apply_penalties(logits: torch.Tensor, params: SamplingParams, context: Sequence[int],
                    generated: int) -> torch.Tensor:
    """The old penalties: `sorted(set(context))` and a bincount of the generated tokens, every call."""
    out = logits.float().clone()
    if params.repetition_penalty != 1.0 and context:
        seen = torch.tensor(sorted(set(context)), dtype=torch.long, device=out.device)
        vals = out[seen]
        out[seen] = torch.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and generated > 0:
        ids = torch.tensor(list(context[len(context) - generated:]), dtype=torch.long, device=out.device)
        counts = torch.bincount(ids, minlength=out.shape[-1])[: out.shape[-1]].to(out.dtype)
        out -= counts * params.frequency_penalty + (counts > 0).to(out.dtype) * params.presence_penalty
    return out


def distribution(logits: torch.Tensor, params: SamplingParams, context: Sequence[int] = (), generated: int = 0,
                 structured: StructuredState | None = None) -> tuple[torch.Tensor | None, int]:
    """(probabilities the old sampler drew from, -1), or (None, argmax) for a greedy row."""
    logits = logits.clone()
    if structured is not None:
        structured.mask(logits)
    if params.banned_token_ids:
        logits[list(params.banned_token_ids)] = float("-inf")
    if params.penalized:
        logits = apply_penalties(logits, params, context, generated)
    if params.greedy:
        return None, int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, dim=-1) >= params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    if params.min_p > 0.0:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return torch.softmax(scores, dim=-1), -1


def inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """The token whose cumulative-probability interval holds u * total (float64 sums)."""
    cdf = probs.double().cumsum(-1)
    return int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=torch.float64), right=True))
