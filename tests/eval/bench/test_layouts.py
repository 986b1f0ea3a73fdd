"""The layout-quality bench: its figures from known answers, and the `bench layouts --json` contract on the real
default model (one prompt, a few tokens: the command's shape, not its numbers)."""

from __future__ import annotations

import json

import pytest

import cli
from eval.bench.layouts import PROMPTS_FILE, load_prompts, score_run, summarize, warm_run
from eval.bench.ttft import TimedRun
from eval.scorers import worst_ngram_count
from moa_stream import MoA
from moa_stream.events import Metrics
from tests.moa_stream.test_moa import small_config

FIGURES = {"worst_4gram", "rep4", "length_vs_classic", "rouge_vs_classic", "ttft_vs_classic", "prefill_computed"}


def test_worst_ngram_count_counts_the_most_repeated_4gram() -> None:
    assert worst_ngram_count("a b c d a b c d a b c d") == 3
    assert worst_ngram_count("one two three four five") == 1
    assert worst_ngram_count("too short") == 0


def test_prompt_set_is_fixed_and_covers_each_kind() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 12
    assert {p.kind for p in prompts} == {"list", "explanation", "short"}
    assert {p.kind for p in load_prompts(3)} == {"list", "explanation", "short"}
    assert PROMPTS_FILE.parent.name == "bench"


def _run(answer: str, tokens: int, ttft: float, prefill: int) -> TimedRun:
    return TimedRun(Metrics(mode="x", ttft_s=ttft, aggregator_prefill_computed=prefill), answer,
                    [0.1 * i for i in range(tokens)])


def test_figures_are_worst_or_mean_over_prompts() -> None:
    classic = _run("leaves turn red when chlorophyll breaks down", 10, 4.0, 100)
    looping = _run("the leaves fall the leaves fall the leaves fall", 5, 1.0, 30)
    same = score_run(classic, classic)
    assert (same.length_vs_classic, same.rouge_vs_classic, same.ttft_vs_classic) == (1.0, 1.0, 1.0)
    loop = score_run(looping, classic)
    assert loop.worst_4gram == 2 and loop.rep4 > 0 and loop.length_vs_classic == 0.5
    assert loop.ttft_vs_classic == 0.25
    summary = summarize([same, loop])
    assert set(summary) == FIGURES
    assert summary["worst_4gram"] == 2 and summary["length_vs_classic"] == 0.75
    assert summary["prefill_computed"] == 65


def test_bench_layouts_json_contract_on_the_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    """Real: the default model (llama.cpp engine), one prompt, classic vs interleaved at a 6-token answer budget."""
    code = cli.main(["bench", "layouts", "--json", "--prompts", "1", "--proposer-tokens", "8",
                     "--answer-tokens", "6", "--layouts", "interleaved"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["default_layout"] == "shifted"  # what `staircase` runs on an engine that can move cached positions
    assert set(out["layouts"]) == {"classic", "interleaved"}
    for row in out["layouts"].values():
        assert set(row) == FIGURES
    assert set(out["by_kind"]) == {load_prompts(1)[0].kind}
    assert set(out["by_kind"][load_prompts(1)[0].kind]["interleaved"]) == FIGURES
    assert out["layouts"]["classic"]["length_vs_classic"] == 1.0
    assert out["layouts"]["interleaved"]["prefill_computed"] > 0
    assert out["setup"]["prompts"] == 1 and out["setup"]["answer_tokens_max"] == 6


async def test_every_run_starts_from_the_same_cache_state(engine) -> None:
    """Real model: a second run of the same question computes its proposers' question again (nothing carried over
    from the first run), and reads their system prompts from the cache its warm-up filled."""
    moa = MoA.from_config(small_config(proposer_tokens=4, answer_tokens=4), engines={"default": engine})
    question = "Why do leaves change colour in autumn? Answer in three sentences."
    first, second = [await warm_run(moa, question, "classic", f"test-{k}") for k in range(2)]
    for a, b in zip(first.metrics.agents.values(), second.metrics.agents.values(), strict=True):
        if a.role == "proposer":
            assert b.prefill_computed == a.prefill_computed > 0
            assert b.prefill_reused == a.prefill_reused > 0
