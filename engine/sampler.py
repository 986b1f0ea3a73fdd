"""Turn a step's logits rows into tokens: every row a step samples, in one vectorised pass.

The order per row is transformers' (and vLLM's): the structured-output mask and banned tokens, penalties on the
raw logits, then temperature, top-k, top-p and min-p, then the draw; a greedy row is an argmax after the mask
and the penalties (the warpers do not change it). Each stage runs once over all the rows that need it, so a
step of 4 or 64 generations costs a handful of tensor ops, not a Python pass per row. Penalties read a
`TokenHistory` kept per generation (no O(context) Python per token); the warpers and the draw are in
`sampling_warpers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .protocol import SamplingParams
from .sampling_warpers import Candidates, draw, probabilities, uniforms, warp
from .structured_state import StructuredState
from .token_history import TokenHistory

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Row:
    """What one logits row samples under: params, the generation's RNG, history and grammar, and draft tokens.

    `extra` are tokens after the history's context that the row's logits follow (a draft's first tokens): the
    penalties count them and the grammar mask is taken after them.
    """

    params: SamplingParams
    generator: torch.Generator | None = None
    history: TokenHistory | None = None
    structured: StructuredState | None = None
    extra: tuple[int, ...] = ()


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
    """A seeded generator for reproducible sampling, or None to use torch's global RNG."""
    if params.seed is None or params.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed)
    return gen


def sample_rows(logits: torch.Tensor, rows: Sequence[Row]) -> list[int | Exception]:
    """The token of each row of `logits` ([len(rows), vocab], float32, overwritten), or the error that row
    alone hit (a grammar failure, or no token left to sample: the engine fails that generation, naming it)."""
    with torch.no_grad():
        failed: dict[int, Exception] = {}
        greedy, drawn, groups = _prepare(logits, rows, failed)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:
            at = torch.tensor(greedy, dtype=torch.long, device=logits.device)
            # max() gives the first of tied maxima, as argmax does, in half argmax's time on a CPU.
            tokens[at] = (logits if len(greedy) == len(rows) else logits[at]).max(-1).indices
        if drawn:
            drawn_at = torch.tensor(drawn, dtype=torch.long, device=logits.device)
            u = uniforms([rows[i].generator for i in drawn], logits.device)
            empty = torch.zeros(len(drawn), dtype=torch.bool, device=logits.device)
            for g in groups:
                tokens[drawn_at[g.rows]], empty[g.rows] = draw(g, u[g.rows])
            for i, nothing in zip(drawn, empty.tolist(), strict=True):
                if nothing:
                    failed.setdefault(i, ValueError(
                        "no token can be sampled: every token is masked or banned, or the logits are not finite"))
        return [failed.get(i, t) for i, t in enumerate(tokens.tolist())]


def distribution(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """What each row draws from ([len(rows), vocab]): the softmax of its warped scores, or for a greedy row
    all the mass on its argmax (`logits` is overwritten; for tests and inspection)."""
    with torch.no_grad():
        greedy, drawn, groups = _prepare(logits, rows, {})
        out = torch.zeros_like(logits)
        if greedy:
            at = torch.tensor(greedy, dtype=torch.long, device=logits.device)
            out[at, logits[at].max(-1).indices] = 1.0
        drawn_at = torch.tensor(drawn, dtype=torch.long, device=logits.device)
        for g in groups:
            out[drawn_at[g.rows]] = probabilities(g, logits.shape[1])
        return out


def _prepare(logits: torch.Tensor, rows: Sequence[Row],
             failed: dict[int, Exception]) -> tuple[list[int], list[int], list[Candidates]]:
    """Mask and penalize `logits` in place; the greedy rows, the drawn rows and the drawn rows' candidates."""
    if logits.dim() != 2 or logits.shape[0] != len(rows):
        raise ValueError(f"sampling takes one logits row per Row, got {tuple(logits.shape)} for {len(rows)}")
    _mask(logits, rows, failed)
    _penalize(logits, rows)
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    drawn = [i for i, r in enumerate(rows) if not r.params.greedy]
    if not drawn:
        return greedy, drawn, []
    sub = logits if len(drawn) == len(rows) else logits[torch.tensor(drawn, device=logits.device)]
    return greedy, drawn, warp(sub, [rows[i].params for i in drawn])


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
           context: Sequence[int] = (), generated: int = 0, structured: StructuredState | None = None) -> int:
    """Pick the next token id from one 1-D logits vector (left unchanged); `context`/`generated` feed the
    penalties (`generated`: how many of the context's last tokens this generation produced), `structured`
    masks what its grammar forbids next."""
    history = TokenHistory(context, generated) if params.penalized else None
    out = sample_rows(logits.float().clone()[None], [Row(params, generator, history, structured)])[0]
    if isinstance(out, Exception):
        raise out
    return out


def apply_penalties(logits: torch.Tensor, params: SamplingParams, context: Sequence[int],
                    generated: int) -> torch.Tensor:
    """Logits after the repetition, frequency and presence penalties (a new tensor; `logits` is not changed).

    `context` is every token of the sequence so far (prompt + generated); its last `generated` tokens are this
    generation's output. The repetition penalty reads the whole context, as transformers'
    RepetitionPenaltyLogitsProcessor reads input_ids (llama.cpp's repeat_penalty reads a window of it); the
    frequency and presence penalties read only the generated tokens, as OpenAI defines them.
    """
    out = logits.float().clone()[None]
    _penalize(out, [Row(params, history=TokenHistory(context, generated))])
    return out[0]


# ---------------------------------------------------------------------------------------------- the stages


def _mask(logits: torch.Tensor, rows: Sequence[Row], failed: dict[int, Exception]) -> None:
    """The grammar's mask (after the row's draft tokens) and the banned tokens, in place."""
    banned: list[torch.Tensor] = []
    vocab = logits.shape[1]
    for i, r in enumerate(rows):
        if r.structured is not None:
            try:
                _mask_after(r.structured, r.extra, logits[i])
            except Exception as exc:  # this row's grammar failed: it fails alone
                failed[i] = exc
        if r.params.banned_token_ids:
            ids = torch.tensor(r.params.banned_token_ids, dtype=torch.long)
            banned.append(ids[ids < vocab] + i * vocab)
    if banned:
        logits.view(-1)[torch.cat(banned).to(logits.device)] = NEG_INF


def _mask_after(state: StructuredState, extra: Sequence[int], row: torch.Tensor) -> None:
    accepted = 0
    try:
        for t in extra:
            if not state.accept(t):
                return  # the draft broke the grammar before this row: it is never used, leave it unmasked
            accepted += 1
        state.mask(row)
    finally:
        if accepted:
            state.rollback(accepted)


def _penalize(logits: torch.Tensor, rows: Sequence[Row]) -> None:
    """Repetition, then frequency and presence penalties, in place, from each row's history."""
    vocab = logits.shape[1]
    flat = logits.view(-1)
    rep_idx: list[torch.Tensor] = []
    rep_by: list[torch.Tensor] = []
    for i, r in enumerate(rows):
        if r.history is not None and r.params.repetition_penalty != 1.0:
            ids = r.history.context_ids(r.extra)
            rep_idx.append(ids + i * vocab)
            rep_by.append(torch.full((len(ids),), r.params.repetition_penalty, dtype=torch.float32))
    if rep_idx:
        idx, by = torch.cat(rep_idx).to(logits.device), torch.cat(rep_by).to(logits.device)
        vals = flat[idx]
        flat[idx] = torch.where(vals > 0, vals / by, vals * by)
    cnt_idx: list[torch.Tensor] = []
    cnt_sub: list[torch.Tensor] = []
    for i, r in enumerate(rows):
        p = r.params
        if r.history is not None and (p.frequency_penalty or p.presence_penalty):
            ids, counts = r.history.generated_counts(r.extra)
            f = torch.tensor(p.frequency_penalty, dtype=torch.float32)
            pres = torch.tensor(p.presence_penalty, dtype=torch.float32)
            cnt_idx.append(ids + i * vocab)
            cnt_sub.append(counts * f + pres)  # every id here was generated: (count > 0) is 1
    if cnt_idx:
        idx, sub = torch.cat(cnt_idx).to(logits.device), torch.cat(cnt_sub).to(logits.device)
        flat[idx] = flat[idx] - sub
