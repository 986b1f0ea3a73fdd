"""The warpers and the draw of the batched sampler: temperature, top-k, top-p, min-p, then one token per row.

Rows with top-k or top-p end up with a few candidate tokens: a partial top-k takes the best `TOP_P_FIRST_K`
by score and widens (8x, then the whole row) only for rows whose kept set reaches past them, and min-p and the
draw then work on those candidates alone. That keeps exactly the set a full sort keeps (up to the order of
exactly tied scores, which a sort leaves open too): a row is settled once its candidates' mass reaches top_p,
since every token past them scores no higher and has at least that mass before it, so it is dropped too.
Rows with neither warper keep the whole row.

The draw is the inverse CDF of one uniform per row, taken from the row's own generator (a seeded generation)
or from torch's global RNG: a row draws the same token batched or alone, and `multinomial`'s one exponential
per vocabulary entry is not paid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .protocol import SamplingParams

TOP_P_FIRST_K = 256  # candidates a top-k/top-p row starts from (a partial top-k of 256 costs about what 64 does)
NEG_INF = float("-inf")


@dataclass(frozen=True)
class Candidates:
    """Warped scores of some rows (-inf: never drawn) and the token id of each column (None: column = id)."""

    rows: torch.Tensor  # which of the warped rows these are
    scores: torch.Tensor  # [len(rows), width]
    ids: torch.Tensor | None


def column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """A float32 [n, 1] column on `like`'s device."""
    return torch.tensor(values, dtype=torch.float32, device=like.device)[:, None]


def warp(logits: torch.Tensor, params: list[SamplingParams]) -> list[Candidates]:
    """Temperature, top-k, top-p and min-p over the rows of `logits` (one SamplingParams each), in place:
    whole-vocabulary temporaries are what a batch of rows pays most for on a CPU."""
    scores = logits.div_(column([p.temperature for p in params], logits))
    vocab = scores.shape[1]
    top_k = [j for j, p in enumerate(params) if 0 < p.top_k < vocab]
    if top_k:
        sub, at = rows_of(scores, top_k)
        ks = torch.tensor([params[j].top_k for j in top_k], dtype=torch.long, device=scores.device)
        kth = torch.topk(sub, int(ks.max())).values.gather(1, (ks - 1)[:, None])
        sub.masked_fill_(sub < kth, NEG_INF)
        if sub is not scores:
            scores[at] = sub
    narrow = [j for j, p in enumerate(params) if p.top_p < 1.0 or 0 < p.top_k < vocab]
    wide = [j for j, p in enumerate(params) if not (p.top_p < 1.0 or 0 < p.top_k < vocab)]
    groups: list[Candidates] = []
    if narrow:
        # A top-k row without top-p drops only what top-k masked (its mass test would drop on rounding).
        top_p = column([params[j].top_p if params[j].top_p < 1.0 else float("inf") for j in narrow], scores)
        groups.extend(_nucleus(*rows_of(scores, narrow), top_p))
    if wide:
        sub, at = rows_of(scores, wide)
        groups.append(Candidates(at, sub, None))
    if not any(p.min_p > 0.0 for p in params):
        return groups
    min_p = column([p.min_p for p in params], scores)
    return [_min_p(g, min_p[g.rows]) for g in groups]


def rows_of(t: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Those rows of `t` (`t` itself when they are all of them: no copy) and their index tensor."""
    at = torch.tensor(rows, dtype=torch.long, device=t.device)
    return (t if len(rows) == t.shape[0] else t[at]), at


def _nucleus(scores: torch.Tensor, rows: torch.Tensor, top_p: torch.Tensor) -> list[Candidates]:
    """Each row's smallest prefix (by score, descending) whose probability reaches its top_p (the first token
    always kept; top_p inf keeps every token that scores above -inf), as candidate groups."""
    vocab = scores.shape[1]
    probs = torch.softmax(scores, dim=-1)
    k = min(TOP_P_FIRST_K, vocab)
    groups: list[Candidates] = []
    while True:
        vals, order = torch.topk(scores, k)  # sorted, descending
        sorted_probs = probs.gather(1, order)
        cum = sorted_probs.cumsum(-1)
        drop = (cum - sorted_probs >= top_p) | (vals == NEG_INF)
        # Settled once the candidates' mass reaches top_p (or the rest is masked): every token past them scores
        # no higher, so the mass before it reaches top_p too and it is dropped.
        settled = (cum[:, -1:] >= top_p)[:, 0] | (vals[:, -1] == NEG_INF) if k < vocab \
            else torch.ones_like(drop[:, -1])
        if bool(settled.all()):
            groups.append(Candidates(rows, vals.masked_fill_(drop, NEG_INF), order))
            return groups
        if bool(settled.any()):
            groups.append(Candidates(rows[settled], vals[settled].masked_fill_(drop[settled], NEG_INF),
                                     order[settled]))
        wider = ~settled
        scores, probs, rows, top_p = scores[wider], probs[wider], rows[wider], top_p[wider]
        k = min(k * 8, vocab)


def _min_p(group: Candidates, min_p: torch.Tensor) -> Candidates:
    probs = torch.softmax(group.scores, dim=-1)
    floor = min_p * probs.max(dim=-1, keepdim=True).values
    return Candidates(group.rows, group.scores.masked_fill(probs < floor, NEG_INF), group.ids)


def uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One uniform in [0, 1) per row (float64): from the row's generator, or torch's global RNG for None."""
    dtype = torch.float64 if device.type != "mps" else torch.float32  # MPS has no float64
    u = torch.empty(len(generators), dtype=dtype, device=device)
    shared = [j for j, g in enumerate(generators) if g is None]
    if shared:
        u[torch.tensor(shared, dtype=torch.long, device=device)] = torch.rand(len(shared), dtype=dtype,
                                                                               device=device)
    for j, g in enumerate(generators):
        if g is not None:
            u[j] = torch.rand(1, generator=g, dtype=dtype, device=g.device)[0]
    return u


def draw(group: Candidates, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The token each row's uniform picks by the inverse CDF of softmax(scores), and whether the row had
    nothing to draw from (every score -inf, or not finite); overwrites `group.scores`.

    The CDF runs over the tokens in id order, so a row's uniform picks the same token whatever its candidates
    were; it is of exp(score - max), in place: normalising would not move the pick, and each whole-row
    temporary costs more than the arithmetic. It is float32 (on a CPU torch accumulates it in float64).
    """
    scores, ids = group.scores, group.ids
    if ids is not None:  # the CDF runs in token-id order, however the candidates were found
        ids, by_id = ids.sort(dim=-1)
        scores = scores.gather(1, by_id)
    weights = scores.sub_(scores.max(dim=-1, keepdim=True).values).exp_()
    cdf = weights.cumsum_(-1)
    total = cdf[:, -1:]
    # Below total, so searchsorted(right) lands on a column of non-zero probability.
    target = torch.minimum((u[:, None] * total.to(u.dtype)).to(cdf.dtype),
                           torch.nextafter(total, torch.zeros_like(total)))
    col = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)
    tokens = col[:, 0] if ids is None else ids.gather(1, col)[:, 0]
    return tokens, ~(total[:, 0] > 0)  # nan (all -inf, or not finite) compares False too


def probabilities(group: Candidates, vocab: int) -> torch.Tensor:
    """The group's rows as full-vocabulary probability rows."""
    probs = torch.softmax(group.scores, dim=-1)
    if group.ids is None:
        return probs
    return torch.zeros(probs.shape[0], vocab, dtype=probs.dtype, device=probs.device).scatter(1, group.ids, probs)
