"""The vLLM backend's translation, tested without vLLM (it cannot be installed or run on these CPU machines).

vLLM's RequestOutput/CompletionOutput are stood in for by small dataclasses with the same attribute names:
the real classes need the vllm package. Everything else here is the real code."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import pytest

from engine import BackendError, ModelLoadError, SamplingParams, TokenDelta
from engine.remote.vllm_engine import (
    VllmEngine,
    engine_args,
    map_finish,
    read_output,
    sampling_kwargs,
    session_blocker,
    session_input,
    streaming_input_class,
    tokens_prompt,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@dataclass
class CompletionOutput:
    """Stand-in for vllm.outputs.CompletionOutput (same attribute names)."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    """Stand-in for vllm.outputs.RequestOutput (same attribute names)."""

    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int | None = None


def test_engine_args_turn_prefix_caching_on_and_keep_our_options_out() -> None:
    args = engine_args("/models/smol", {"gpu_memory_utilization": 0.5, "streaming_input": True,
                                        "tokenizer_name": "x"})
    assert args == {"model": "/models/smol", "gpu_memory_utilization": 0.5, "enable_prefix_caching": True}
    assert engine_args("m", {"enable_prefix_caching": False})["enable_prefix_caching"] is False


def test_sampling_params_translate_field_by_field() -> None:
    greedy = sampling_kwargs(SamplingParams(max_tokens=7))
    assert greedy == {"max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "ignore_eos": False,
                      "skip_special_tokens": True}
    full = sampling_kwargs(SamplingParams(max_tokens=3, temperature=0.7, top_p=0.9, top_k=20, seed=5,
                                          stop=("[more",), stop_token_ids=(2,), ignore_eos=True))
    assert full == {"max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "ignore_eos": True,
                    "skip_special_tokens": True, "top_k": 20, "seed": 5, "stop": ["[more"], "stop_token_ids": [2]}
    penalised = sampling_kwargs(SamplingParams(repetition_penalty=1.1, frequency_penalty=0.5, min_p=0.05))
    assert penalised["repetition_penalty"] == 1.1 and penalised["frequency_penalty"] == 0.5
    assert penalised["min_p"] == 0.05 and "presence_penalty" not in penalised
    assert sampling_kwargs(SamplingParams(banned_token_ids=(9, 4, 9)))["logit_bias"] == {4: -100.0, 9: -100.0}


def test_prompts_and_session_inputs() -> None:
    assert tokens_prompt((1, 2, 3)) == {"prompt_token_ids": [1, 2, 3]}
    # A session holding 4 tokens gets only the rest (the last generated token is re-sent by design).
    assert session_input([1, 2, 3, 4, 5, 6], 4) == [5, 6]
    assert session_blocker(SamplingParams()) is None
    assert "stop strings" in (session_blocker(SamplingParams(stop=("x",))) or "")


def test_finish_reasons_map_onto_the_engine_contract() -> None:
    assert [map_finish(r) for r in (None, "stop", "length", "abort")] == [None, "stop", "length", "abort"]


def test_delta_outputs_become_token_deltas() -> None:
    mid = read_output(RequestOutput([CompletionOutput([11, 12], " Paris")], num_cached_tokens=32))
    assert mid.delta == TokenDelta((11, 12), " Paris", None)
    assert mid.cached_tokens == 32 and not mid.request_finished
    last = read_output(RequestOutput([CompletionOutput([2], "", "stop")], finished=True))
    assert last.delta == TokenDelta((2,), "", "stop") and last.request_finished and last.cached_tokens is None
    # finished without a reason (an aborted session's last output) still ends the stream
    assert read_output(RequestOutput([CompletionOutput([], "")], finished=True)).delta.finish_reason == "stop"
    with pytest.raises(BackendError, match="without completions"):
        read_output(RequestOutput([]))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the GPU tests cover construction")
def test_without_vllm_the_backend_says_how_to_get_it() -> None:
    assert streaming_input_class() is None
    with pytest.raises(ModelLoadError, match=r"pip install 'moa-stream\[vllm\]'"):
        VllmEngine("smollm2")
