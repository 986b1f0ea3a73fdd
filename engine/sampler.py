"""Turn one row of logits into a token under SamplingParams.

The order is transformers' (and vLLM's): the structured-output mask and banned tokens, penalties on the raw
logits, then temperature, top-k, top-p and min-p, then the draw (or argmax when greedy: penalties still apply,
warpers do not matter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .protocol import SamplingParams
from .structured_state import StructuredState


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
    """A seeded generator for reproducible sampling, or None to use torch's global RNG."""
    if params.seed is None or params.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed)
    return gen


def apply_penalties(logits: torch.Tensor, params: SamplingParams, context: Sequence[int],
                    generated: int) -> torch.Tensor:
    """Logits after the repetition, frequency and presence penalties (a new tensor; `logits` is not changed).

    `context` is every token of the sequence so far (prompt + generated); its last `generated` tokens are this
    generation's output. The repetition penalty reads the whole context, as transformers'
    RepetitionPenaltyLogitsProcessor reads input_ids (llama.cpp's repeat_penalty reads a window of it); the
    frequency and presence penalties read only the generated tokens, as OpenAI defines them.
    """
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


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
           context: Sequence[int] = (), generated: int = 0, structured: StructuredState | None = None) -> int:
    """Pick the next token id from a 1-D logits vector (left unchanged); `context`/`generated` feed the penalties,
    `structured` (the generation's grammar state) masks the tokens its grammar forbids next."""
    if params.banned_token_ids or structured is not None:
        logits = logits.clone()
    if structured is not None:
        structured.mask(logits)
    if params.banned_token_ids:
        logits[list(params.banned_token_ids)] = float("-inf")
    if params.penalized:
        logits = apply_penalties(logits, params, context, generated)
    if params.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = cum - torch.softmax(sorted_scores, dim=-1) >= params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    if params.min_p > 0.0:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
