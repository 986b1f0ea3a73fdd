"""Mixed backends in one MoA: proposers on llama.cpp's server (HTTP backend), the aggregator on the local
transformers engine; proposers on dead or misbehaving servers fail alone while the answer completes."""

from __future__ import annotations

from typing import Any

from engine.remote import HttpEngine
from engine.transformers_engine import TransformersEngine
from moa_stream import AgentError, AggregatorDelta, ChunkIngested, Done, FirstToken, MoA, ProposerDelta
from tests.llama_server import LlamaServer, free_port
from tests.misbehaving_server import MisbehavingServer

QUESTION = "Why is the sky blue? Answer in one sentence."
LLAMA_OPTIONS = {"extra_body": {"repeat_penalty": 1.0}}  # llama.cpp's default penalty would differ from ours


def proposer(name: str, backend: str, seed: int) -> dict[str, Any]:
    """A short proposer on one backend."""
    return {"name": name, "backend": backend, "temperature": 0.7, "seed": seed, "max_tokens": 16,
            "system_prompt": "You are a careful expert. Answer briefly."}


def mixed_config(backends: dict[str, Any], layer: list[dict[str, Any]]) -> dict[str, Any]:
    """A staircase MoA whose aggregator runs on the local default model."""
    return {
        "backends": {"default": {"kind": "transformers"}, **backends},
        "layers": [layer],
        "aggregator": {"name": "aggregator", "backend": "default", "temperature": 0.0, "max_tokens": 12},
        "mode": "staircase",
        "staircase": {"first_chunk_tokens": 4, "chunk_tokens": 4, "aggregator_tokens_per_intake": 4,
                      "agent_timeout_s": 60},
    }


async def test_staircase_with_proposers_on_llama_server_and_local_aggregator(llama_server: LlamaServer) -> None:
    cfg = mixed_config(
        {"llama": {"kind": "http", "base_url": llama_server.base_url, "options": LLAMA_OPTIONS}},
        [proposer("analyst", "llama", 1), proposer("skeptic", "llama", 2)],
    )
    moa = MoA.from_config(cfg)
    try:
        assert isinstance(moa.engines["llama"], HttpEngine)
        assert isinstance(moa.engines["default"], TransformersEngine)
        events = [ev async for ev in moa.stream(QUESTION)]
        stats = moa.engine_stats()
    finally:
        await moa.aclose()
    errors = [e for e in events if isinstance(e, AgentError)]
    assert not errors, errors
    for name in ("analyst", "skeptic"):
        assert any(isinstance(e, ProposerDelta) and e.agent == name and e.text for e in events)
        assert any(isinstance(e, ChunkIngested) and e.agent == name for e in events)
    assert any(isinstance(e, FirstToken) for e in events)
    done = events[-1]
    assert isinstance(done, Done) and done.answer.strip()
    assert done.answer == "".join(e.text for e in events if isinstance(e, AggregatorDelta))
    assert done.metrics.agents["analyst"].completion_tokens > 0
    # The proposers' tokens were decoded by the server; the aggregator's locally.
    assert stats["llama"].decode_tokens >= done.metrics.agents["analyst"].completion_tokens
    assert stats["default"].decode_tokens > 0 and stats["llama"].sequences_open == 0


async def test_dead_and_misbehaving_proposers_fail_alone(llama_server: LlamaServer,
                                                         fake: MisbehavingServer) -> None:
    cfg = mixed_config(
        {
            "llama": {"kind": "http", "base_url": llama_server.base_url, "options": LLAMA_OPTIONS},
            "dead": {"kind": "http", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m",
                     "options": {"max_retries": 1, "backoff_s": 0.01, "tokenizer_name": "smollm2"}},
            "cut": {"kind": "http", "base_url": fake.url("cut"), "options": {"max_retries": 0}},
            "stall": {"kind": "http", "base_url": fake.url("stall"), "timeout_s": 1.0},
        },
        [proposer("good", "llama", 1), proposer("gone", "dead", 2), proposer("broken", "cut", 3),
         proposer("silent", "stall", 4)],
    )
    moa = MoA.from_config(cfg)
    try:
        result = await moa.run(QUESTION)
    finally:
        await moa.aclose()
    failed = {e.agent: e for e in result.errors}
    assert set(failed) == {"gone", "broken", "silent"}, result.errors
    assert "cannot connect" in failed["gone"].error and "127.0.0.1" in failed["gone"].error
    assert "cut mid-way" in failed["broken"].error
    assert "stalled" in failed["silent"].error
    assert result.answer.strip(), "the answer must complete from the proposer that worked"
    assert result.metrics.agents["good"].completion_tokens > 0
