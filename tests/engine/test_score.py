"""engine.score on the embedded engine: the log-probabilities of a plain HF forward, the sequence left as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine import SamplingParams
from engine.errors import InvalidTokensError, SequenceBusyError
from engine.transformers_engine import TransformersEngine


def _hf_logprobs(model: Any, context: list[int], tokens: list[int]) -> list[float]:
    ids = torch.tensor([context + tokens])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(context) - 1 + i, t]) for i, t in enumerate(tokens)]


async def _greedy(engine: TransformersEngine, seq: Any, n: int) -> list[int]:
    out: list[int] = []
    async for d in engine.generate(seq, SamplingParams(max_tokens=n, ignore_eos=True)):
        out.extend(d.token_ids)
    return out


@pytest.mark.parametrize("context_len", [5, 8, 23])  # partial last block, full last block (block_size 4), longer
async def test_score_equals_hf_log_softmax(tiny_engine: TransformersEngine, ref_model: Any, context_len: int) -> None:
    context = [(7 * i + 3) % 500 + 1 for i in range(context_len)]
    tokens = [11, 200, 42, 42, 9, 310, 77]
    seq = await tiny_engine.open(context)
    got = await tiny_engine.score(seq, tokens)
    assert got == pytest.approx(_hf_logprobs(ref_model, context, tokens), abs=1e-4)
    assert await tiny_engine.score(seq, tokens[:1]) == pytest.approx(got[:1], abs=1e-5)


async def test_score_after_generate_and_append(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """The context's last token may be a sampled one whose KV is not computed yet: it is computed on the fork."""
    context = [5, 6, 7, 8, 9, 10]
    seq = await tiny_engine.open(context)
    gen = await _greedy(tiny_engine, seq, 3)
    tokens = [100, 101]
    got = await tiny_engine.score(seq, tokens)
    assert got == pytest.approx(_hf_logprobs(ref_model, context + gen, tokens), abs=1e-4)
    await tiny_engine.append(seq, [12, 13])
    got = await tiny_engine.score(seq, tokens)
    assert got == pytest.approx(_hf_logprobs(ref_model, context + gen + [12, 13], tokens), abs=1e-4)


async def test_score_leaves_the_sequence_unchanged(tiny_engine: TransformersEngine) -> None:
    context = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    plain = await tiny_engine.open(context)
    expected = await _greedy(tiny_engine, plain, 10)
    scored = await tiny_engine.open(context)
    open_before = tiny_engine.stats().sequences_open
    stats_before = tiny_engine.seq_stats(scored)
    computed_before = tiny_engine.stats().prefill_computed
    await tiny_engine.score(scored, list(range(20, 33)))
    assert tiny_engine.tokens(scored) == context
    assert tiny_engine.seq_stats(scored) == stats_before
    assert tiny_engine.stats().sequences_open == open_before  # the fork is closed
    assert tiny_engine.stats().prefill_computed - computed_before == 13  # the scored tokens count as prefill
    assert await _greedy(tiny_engine, scored, 10) == expected


async def test_bad_tokens_raise_typed_errors(tiny_engine: TransformersEngine) -> None:
    seq = await tiny_engine.open([1, 2, 3])
    with pytest.raises(InvalidTokensError):
        await tiny_engine.score(seq, [])
    with pytest.raises(InvalidTokensError):
        await tiny_engine.score(seq, [1, tiny_engine.vocab_size])
    with pytest.raises(InvalidTokensError):
        await tiny_engine.score(seq, [-1])
    with pytest.raises(InvalidTokensError):
        await tiny_engine.score(seq, [1] * tiny_engine.max_model_len)
    stream = tiny_engine.generate(seq, SamplingParams(max_tokens=50, ignore_eos=True))
    with pytest.raises(SequenceBusyError):
        await tiny_engine.score(seq, [4])
    await stream.aclose()
    assert tiny_engine.tokens(seq)[:3] == [1, 2, 3]
