"""`bench ttft`'s comparison: answer completeness, the total-time ratio at equal answer length, short answers."""

from __future__ import annotations

import pytest

from moa_stream import Metrics
from moa_stream.events import AgentMetrics
from moa_stream.ttft_benchmark import TimedRun, bench_modes, compare


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
    assert "blocks" in modes or "interleaved" in modes
    assert len(modes) == 5
