"""VllmEngine on a real GPU with vLLM: the engine contract, prefix-cache reuse and streaming-input sessions.

Runs only where vllm is installed and CUDA is available; vLLM cannot run on the CPU machines CI uses."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine import SamplingParams, TokenDelta

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]


def _why_skip() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "needs vllm (pip install 'moa-stream[vllm]'), which needs a CUDA GPU"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU for vllm"
    return None


if (_reason := _why_skip()) is not None:
    pytest.skip(_reason, allow_module_level=True)

# Small enough for any GPU; eager mode skips CUDA-graph capture, which would dominate a test's time.
OPTIONS: dict[str, Any] = {"dtype": "half", "gpu_memory_utilization": 0.3, "max_model_len": 2048,
                           "enforce_eager": True}


async def collect(gen: AsyncIterator[TokenDelta]) -> list[TokenDelta]:
    """Every delta of a generation."""
    return [d async for d in gen]


def chat_prompt(tokenizer: Any, question: str) -> list[int]:
    """Chat-templated ids of one question."""
    out = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module", params=[False, True], ids=["requests", "sessions"])
async def vllm_engine(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The default model on vLLM, with plain prefix-cached requests or streaming-input sessions."""
    from engine.remote.vllm_engine import VllmEngine, streaming_input_class

    if request.param and streaming_input_class() is None:
        pytest.skip("the installed vLLM has no streaming-input sessions")
    eng = VllmEngine("smollm2", streaming_input=request.param, **OPTIONS)
    yield eng
    await eng.shutdown()


async def test_generate_append_generate_reuses_the_prefix(vllm_engine: Any) -> None:
    tok = vllm_engine.tokenizer
    prompt = chat_prompt(tok, "What is the capital of France?" + " Please answer in detail." * 8)
    seq = await vllm_engine.open(prompt)
    first = await collect(vllm_engine.generate(seq, SamplingParams(max_tokens=16)))
    ids = [t for d in first for t in d.token_ids]
    assert first[-1].finish_reason in ("stop", "length") and ids
    assert vllm_engine.tokens(seq) == prompt + ids
    more = tok.encode("<|im_end|>\n<|im_start|>user\nAnd of Spain?<|im_end|>\n<|im_start|>assistant\n",
                      add_special_tokens=False)
    await vllm_engine.append(seq, more)
    before = vllm_engine.seq_stats(seq)
    second = await collect(vllm_engine.generate(seq, SamplingParams(max_tokens=8)))
    assert "".join(d.text for d in second).strip()
    after = vllm_engine.seq_stats(seq)
    # Everything but the new turn (and at most one partial block) came from the cache or the live session.
    assert after.prefill_computed - before.prefill_computed <= len(more) + 16 + 1
    assert after.prefill_reused - before.prefill_reused >= len(prompt) - 16
    await vllm_engine.close(seq)
    assert vllm_engine.stats().sequences_open == 0


async def test_greedy_output_matches_a_fresh_sequence(vllm_engine: Any) -> None:
    """Appending then generating gives what one request with the whole history gives (greedy)."""
    tok = vllm_engine.tokenizer
    prompt = chat_prompt(tok, "Name three colors.")
    a = await vllm_engine.open(prompt[:10])
    await vllm_engine.append(a, prompt[10:])
    b = await vllm_engine.open(prompt)
    out_a = await collect(vllm_engine.generate(a, SamplingParams(max_tokens=12)))
    out_b = await collect(vllm_engine.generate(b, SamplingParams(max_tokens=12)))
    assert [t for d in out_a for t in d.token_ids] == [t for d in out_b for t in d.token_ids]
    for s in (a, b):
        await vllm_engine.close(s)


async def test_stop_strings_and_cancel(vllm_engine: Any) -> None:
    tok = vllm_engine.tokenizer
    seq = await vllm_engine.open(chat_prompt(tok, "Count from one to twenty in words, separated by commas."))
    out = await collect(vllm_engine.generate(seq, SamplingParams(max_tokens=64, stop=(",",))))
    assert out[-1].finish_reason == "stop" and "," not in "".join(d.text for d in out)
    gen = vllm_engine.generate(seq, SamplingParams(max_tokens=64))
    async for _ in gen:
        break
    await gen.aclose()
    again = await collect(vllm_engine.generate(seq, SamplingParams(max_tokens=4)))
    assert again[-1].finish_reason in ("stop", "length")
    await vllm_engine.close(seq)
