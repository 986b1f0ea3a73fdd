"""`bench debate` and `bench ttft --layers` end to end at tiny sizes, on the llama.cpp engine and the offline model."""

from __future__ import annotations

import pytest

from eval.bench.debate import debate_bench_config, run_debate_bench
from eval.bench.ttft import bench_config, layered, run_ttft_bench
from moa_stream import MoA, MoAConfig
from moa_stream.config import LlamaCppBackend


def on_llama_cpp(cfg: MoAConfig) -> MoAConfig:
    """The config on the default GGUF through the llama.cpp engine, chunks of 2 tokens."""
    pytest.importorskip("llama_cpp")
    return cfg.model_copy(update={"backends": {"default": LlamaCppBackend()},
                                  "staircase": cfg.staircase.with_chunk(2)})


async def test_bench_debate_runs_both_systems_at_equal_work_and_reads_each_token_once() -> None:
    cfg = on_llama_cpp(debate_bench_config(MoAConfig.default(), agents=3, rounds=2, turn_tokens=6, answer_tokens=4))
    moa = MoA.from_config(cfg)
    try:
        out = await run_debate_bench(moa, "What is the capital of France?")
    finally:
        await moa.aclose()
    for mode in ("debate", "debate-sequential"):
        row = out[mode]
        assert 0 < row["ttft_s"] <= row["total_s"] and row["answer_tokens"] > 0
        assert set(row["rounds"]) == {"1", "2"}
        assert all(r["reread_tokens"] == 0 for r in row["rounds"].values())  # each round's reads were its Δ
    # Sequential: every debater wrote its whole turn in both rounds. Streaming: at most that (agents still writing
    # when the answer is over are stopped), and the first chunks at least.
    assert [out["debate-sequential"]["rounds"][r]["written_tokens"] for r in ("1", "2")] == [3 * 6, 3 * 6]
    assert all(3 * 2 <= out["debate"]["rounds"][r]["written_tokens"] <= 3 * 6 for r in ("1", "2"))
    assert out["debate_ttft_ratio"] == pytest.approx(out["debate"]["ttft_s"] / out["debate-sequential"]["ttft_s"])
    assert out["setup"]["agents"] == ["analyst", "explainer", "skeptic"] and out["setup"]["rounds"] == 2


async def test_bench_ttft_with_two_layers_runs_classic_and_staircase() -> None:
    cfg = on_llama_cpp(bench_config(layered(MoAConfig.default(proposers=2), 2), proposer_tokens=6, answer_tokens=4))
    assert [[a.name for a in layer] for layer in cfg.layers] == [["analyst", "explainer"],
                                                                 ["analyst@L1", "explainer@L1"]]
    moa = MoA.from_config(cfg)
    try:
        out = await run_ttft_bench(moa, "What is the capital of France?", modes=["classic", "staircase"])
    finally:
        await moa.aclose()
    assert set(out) == {"classic", "staircase", "setup"} and out["setup"]["layers"] == 2
    stair = out["staircase"]
    assert stair["ttft_ratio_vs_classic"] == pytest.approx(stair["ttft_s"] / out["classic"]["ttft_s"])
    assert stair["prefill_computed"] > 0 and stair["answer_tokens"] > 0
