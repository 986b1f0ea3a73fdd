"""`bench ttft`'s comparison (answer completeness, the total-time ratio at equal answer length, short answers) and
its peer: classic MoA as a client of llama.cpp's server on loopback."""

from __future__ import annotations

from typing import Any

import pytest

from eval.bench.peer_moa import PeerRun, classic_over_http
from eval.bench.ttft import TimedRun, bench_config, bench_modes, compare, compare_peer, run_ttft_bench
from moa_stream import LAYOUT_MODES, Metrics, MoAConfig, layout_class
from moa_stream.events import AgentMetrics


def run(mode: str, ttft: float, step: float, tokens: int, total: float, finish: str) -> TimedRun:
    """A run whose answer tokens arrive every `step` seconds from `ttft` on."""
    agg = AgentMetrics(role="aggregator", layer=1, finish_reason=finish)
    metrics = Metrics(mode=mode, ttft_s=ttft, total_s=total, answer_tokens=tokens, agents={"aggregator": agg})
    return TimedRun(metrics, "x" * tokens, [ttft + i * step for i in range(tokens)])


def test_ratio_is_taken_at_the_shorter_answer_and_short_answers_are_flagged() -> None:
    classic = run("classic", 20.0, 0.1, 100, 30.0, "length")
    stair = run("staircase", 1.0, 0.5, 8, 5.0, "stop")
    rows = compare({"classic": classic, "staircase": stair})
    row = rows["staircase"]
    assert (row["answer_tokens"], row["finish_reason"], row["equal_length_tokens"]) == (8, "stop", 8)
    # 8th token: staircase at 1.0 + 7 * 0.5 = 4.5 s; classic at 20.0 + 7 * 0.1 = 20.7 s (not its 30 s total).
    assert row["total_ratio_vs_classic"] == pytest.approx(4.5 / 20.7)
    assert row["short_answer"] and row["answer_fraction_of_classic"] == pytest.approx(0.08)
    assert row["ttft_ratio_vs_classic"] == pytest.approx(0.05)
    long = compare({"classic": classic, "staircase": run("staircase", 1.0, 0.2, 90, 19.0, "length")})["staircase"]
    assert not long["short_answer"] and long["equal_length_tokens"] == 90


def test_an_alias_runs_once_under_its_own_name() -> None:
    modes = bench_modes()
    assert modes[:4] == ["single", "classic", "staircase-reprefill", "staircase"]
    classes = [layout_class(m) for m in modes]
    assert len(set(classes)) == len(classes), "two modes ran the same layout"
    assert set(classes) == {layout_class(m) for m in LAYOUT_MODES}, "a layout no mode runs under"


def test_answer_rate_staircase_vs_single_and_the_peer_ratios() -> None:
    single = run("single", 0.2, 0.05, 40, 2.2, "length")
    stair = run("staircase", 0.5, 0.1, 40, 4.5, "length")
    out = compare({"single": single, "staircase": stair})
    assert out["single"]["aggregator_tok_s"] == pytest.approx(20.0)
    assert out["staircase"]["aggregator_tok_s"] == pytest.approx(10.0)
    # At equal length (40 tokens): staircase's 40th token at 0.5 + 39 * 0.1, single's at 0.2 + 39 * 0.05.
    assert out["staircase_total_vs_single"] == pytest.approx(4.4 / 2.15)
    assert out["single"]["proposer_tok_s"] is None  # no proposer ran
    peer = PeerRun("answer", total_s=12.0, proposals_s=10.0, proposal_tokens=300, token_times=[10.5, 11.0, 12.0])
    out = compare_peer(out, peer)
    assert out["peer_classic"]["ttft_s"] == 10.5 and out["peer_classic"]["proposer_tok_s"] == pytest.approx(30.0)
    assert out["staircase_vs_peer_ttft"] == pytest.approx(0.5 / 10.5)
    assert out["classic_vs_peer_ttft"] is None  # classic did not run


async def test_classic_moa_against_llama_cpp_server_reports_consistent_times(llama_server: Any) -> None:
    """The peer's client on a real llama.cpp server on loopback: every proposal written in full, then the answer."""
    from engine.llamacpp_engine.tokenizer import load_tokenizer
    from tests.llama_server import gguf_path

    cfg = bench_config(MoAConfig.default(proposers=2), proposer_tokens=4, answer_tokens=4)
    peer = await classic_over_http(llama_server.base_url, cfg, "What is the capital of France?",
                                   load_tokenizer(gguf_path()))
    row = peer.to_dict()
    assert row["proposal_tokens"] == 2 * 4  # min_tokens: the peer's proposers write what ours write
    assert 1 <= row["answer_tokens"] <= 4 and peer.answer
    assert 0 < row["proposals_s"] < row["ttft_s"] <= row["total_s"]
    assert row["proposer_tok_s"] == pytest.approx(8 / row["proposals_s"])


async def test_bench_ttft_with_the_peer_reports_every_field() -> None:
    """`bench ttft --peer` end to end at tiny sizes: our modes on the llama.cpp engine, then llama.cpp's server."""
    pytest.importorskip("llama_cpp")
    from moa_stream import MoA
    from moa_stream.config import LlamaCppBackend

    cfg = bench_config(MoAConfig.default(proposers=2), proposer_tokens=6, answer_tokens=4)
    cfg = cfg.model_copy(update={"backends": {"default": LlamaCppBackend()},
                                 "staircase": cfg.staircase.with_chunk(2)})
    moa = MoA.from_config(cfg)
    try:
        out = await run_ttft_bench(moa, "What is the capital of France?", peer=True)
    finally:
        await moa.aclose()
    peer = out["peer_classic"]
    assert {"ttft_s", "total_s"} <= set(peer) and 0 < peer["ttft_s"] <= peer["total_s"]
    assert out["classic_vs_peer_ttft"] == pytest.approx(out["classic"]["ttft_s"] / peer["ttft_s"])
    assert out["staircase_vs_peer_ttft"] == pytest.approx(out["staircase"]["ttft_s"] / peer["ttft_s"])
    assert out["staircase_total_vs_single"] > 0
    for mode in bench_modes():
        assert {"aggregator_tok_s", "proposer_tok_s", "ttft_s", "total_s", "answer_tokens"} <= set(out[mode])
    assert out["single"]["proposer_tok_s"] is None and out["classic"]["proposer_tok_s"] > 0
