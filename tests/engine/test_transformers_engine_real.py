"""TransformersEngine on the real default model (SmolLM2-135M-Instruct, fp32): exact vs generate(), O(Δ), batching."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from engine import SamplingParams
from engine.transformers_engine import TransformersEngine
from tests.conftest import chat_ids, collect, count_model_positions


@pytest.fixture(scope="module")
def hf_model(default_model_path: str) -> Any:
    """A second copy of the default model running transformers' own attention and generate()."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def hf_generate(model: Any, tokens: list[int], n: int) -> list[int]:
    """transformers' greedy generate() on the whole input (stops at the model's EOS like the engine)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([tokens]), attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None)
    return out[0, len(tokens):].tolist()


async def test_greedy_after_appends_equals_hf_generate(engine: TransformersEngine, hf_model: Any) -> None:
    """open + 2 appends + generate, then a second turn appended, equal generate() on the whole input."""
    prompt = chat_ids(engine, "Name three primary colors, then explain in one sentence why the sky is blue.")
    a, b = len(prompt) // 3, 2 * len(prompt) // 3 + 5
    seq = await engine.open(prompt[:a])
    try:
        await engine.append(seq, prompt[a:b])
        await engine.append(seq, prompt[b:])
        ids, text, reason = await collect(engine, seq, SamplingParams(max_tokens=20))
        assert ids == hf_generate(hf_model, prompt, 20)
        assert text.strip() and reason in ("length", "stop")

        follow = engine.tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd at sunset?<|im_end|>\n"
                                         "<|im_start|>assistant\n", add_special_tokens=False)
        before = engine.seq_stats(seq)
        await engine.append(seq, follow)
        after = engine.seq_stats(seq)
        assert after.prefill_computed - before.prefill_computed == len(follow)
        ids2, _, _ = await collect(engine, seq, SamplingParams(max_tokens=12))
        assert ids2 == hf_generate(hf_model, prompt + ids + follow, 12)
    finally:
        await engine.close(seq)


async def test_short_answer_stops_at_eos(engine: TransformersEngine, hf_model: Any) -> None:
    """A short answer ends with the model's EOS token and finish_reason 'stop', like generate()."""
    prompt = chat_ids(engine, "What is the capital of France? Answer with one word.")
    seq = await engine.open(prompt)
    try:
        ids, text, reason = await collect(engine, seq, SamplingParams(max_tokens=40))
        assert reason == "stop" and ids[-1] in engine.eos_token_ids
        assert "Paris" in text
        assert ids == hf_generate(hf_model, prompt, 40)
    finally:
        await engine.close(seq)


async def test_append_and_fork_cost_on_real_model(engine: TransformersEngine) -> None:
    """On the real model an append of Δ computes Δ, a fork 0, and a shared prefix is reused across sequences."""
    text = " ".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(40))
    base = engine.tokenizer.encode(text)
    delta = engine.tokenizer.encode(" Now summarise the facts above.", add_special_tokens=False)
    seq = await engine.open(base)
    other = None
    try:
        eng0 = engine.stats()
        with count_model_positions(engine) as fed:
            await engine.append(seq, delta)
        assert engine.stats().prefill_computed - eng0.prefill_computed == len(delta) <= len(delta) + engine.block_size
        assert fed.count == len(delta), "measured at the model: the append fed exactly its Δ tokens"
        with count_model_positions(engine) as fed:
            child = await engine.fork(seq)
        assert engine.seq_stats(child).prefill_computed == 0
        assert fed.count == 0, "measured at the model: a fork computes nothing"
        await engine.close(child)

        eng1 = engine.stats()
        with count_model_positions(engine) as fed:
            other = await engine.open(base + delta[:3])
        st = engine.seq_stats(other)
        bs = engine.block_size
        assert st.prefill_reused == (len(base) + 3 - 1) // bs * bs
        assert st.prefill_computed == len(base) + 3 - st.prefill_reused <= bs
        assert fed.count == st.prefill_computed == engine.stats().prefill_computed - eng1.prefill_computed
    finally:
        await engine.close(seq)
        if other is not None:
            await engine.close(other)


async def test_four_concurrent_generates_match_sequential(engine: TransformersEngine) -> None:
    """Four concurrent greedy streams complete and equal their sequential runs, in fewer forward passes."""
    questions = ["What is 2 + 2?", "Name a fruit that is yellow.", "Translate 'cat' to French.",
                 "Give one word that rhymes with 'blue'."]
    prompts = [chat_ids(engine, q) for q in questions]
    params = SamplingParams(max_tokens=12)

    open0 = engine.stats().sequences_open
    sequential = []
    steps_seq = 0
    for p in prompts:
        s = await engine.open(p)
        try:
            steps0 = engine.stats().forward_steps
            sequential.append(await collect(engine, s, params))
            steps_seq += engine.stats().forward_steps - steps0
        finally:
            await engine.close(s)

    seqs = [await engine.open(p) for p in prompts]
    try:
        steps0 = engine.stats().forward_steps
        concurrent = await asyncio.gather(*(collect(engine, s, params) for s in seqs))
        steps_conc = engine.stats().forward_steps - steps0
    finally:
        for s in seqs:
            await engine.close(s)
    assert [c[0] for c in concurrent] == [s[0] for s in sequential]
    assert [c[1] for c in concurrent] == [s[1] for s in sequential]
    assert all(c[2] in ("stop", "length") for c in concurrent)
    assert steps_conc < steps_seq / 2, f"{steps_conc} batched steps vs {steps_seq} sequential"
    assert engine.stats().sequences_open == open0
