"""Option log-likelihood rows, each system measured from a cold prefix cache, a seeded random system order, and
the n/a of an engine that cannot score; on the real default model (and llama.cpp's server for the n/a)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from engine.remote.http_engine import HttpEngine
from eval import command, datasets, runner
from eval.option_scoring import score_options
from moa_stream import MoA, MoAConfig


def _moa(engine: Any, **update: Any) -> MoA:
    cfg = MoAConfig.default(max_tokens=8)
    return MoA.from_config(cfg.model_copy(update={"layers": [cfg.layers[0][:2]], **update}),
                           engines={"default": engine})


async def test_loglik_rows_score_the_options_at_the_answer_start(engine):
    moa = _moa(engine)
    sample = datasets.load("mmlu", 1, 0)[0]
    open_before = engine.stats().sequences_open
    for system in runner.parse_systems("single,classic,staircase@4,blocks@4"):
        row = await runner.loglik(moa, sample, system, runner.cold_salt(sample, system, "loglik"))
        assert row.error is None and row.na is None
        assert row.sample_id == sample.id + "-loglik" and row.dataset == "mmlu-loglik" and row.system == system.name
        assert row.answer in "ABCD" and row.score == float(row.answer == sample.answers[0])
        assert set(row.scores) == {"score", "loglik_acc", "loglik_acc_norm", "p_correct", "logprob_correct"}
        assert 0.0 < row.scores["p_correct"] < 1.0 and row.scores["logprob_correct"] < 0.0
        assert row.ttft_s > 0 and row.total_s >= row.ttft_s and row.answer_tokens == 0 and row.prefill_computed > 0
        assert (row.chunks_ingested > 0) == (system.mode != "single")
    assert engine.stats().sequences_open == open_before  # every agent's sequence and every scoring fork closed

    # `single` scores from the aggregator's bare prompt: the context is exactly the prompt moa.prompt_tokens counts.
    opts = ["A. yes", "B. no"]
    scored = await score_options(moa, "Is water wet?", opts, mode="single")
    assert scored.context_tokens == moa.prompt_tokens("Is water wet?")[moa.config.aggregator.name]
    assert len(scored.logprobs) == 2 and scored.best in (0, 1) and scored.chunks_ingested == 0
    assert scored.tokens == tuple(len(engine.tokenizer.encode(o, add_special_tokens=False)) for o in opts)
    with pytest.raises(ValueError):
        await score_options(moa, "Is water wet?", [], mode="single")


async def test_each_system_is_measured_cold_and_in_a_seeded_random_order(engine, tmp_path):
    moa = _moa(engine)
    samples = [*datasets.load("nq-open", 2, 0), *datasets.load("mmlu", 1, 0)]
    systems = runner.parse_systems("single,classic,staircase@4")
    out = tmp_path / "rows.jsonl"
    assert await runner.run(moa, samples, systems, out, max_tokens=4, progress=False, seed=3) == 2 * 3 + 1 * 6
    rows = runner.read_rows(out)
    plan = runner._plan(samples, systems, True, False, 3)
    assert [(r.sample_id, r.system, r.order) for r in rows] == [
        (s.id + ("-loglik" if ll else ""), sy.name, i) for s, sy, ll, i in plan]
    assert len({tuple(r.system for r in rows if r.sample_id == s.id) for s in samples}) > 1  # orders differ
    assert sorted(r.order for r in rows if r.sample_id.startswith(samples[2].id)) == list(range(6))
    # The mmlu sample's `single` answer and `single` log-likelihood read the same prompt, one after the other
    # on one engine: with a salt each, neither is served by the other's blocks.
    assert all(r.prefill_reused == 0 for r in rows if r.system == "single")

    # The control that makes the check above mean something: the same prompt under a shared salt is served.
    sample, single = samples[0], systems[0]
    first = await runner.answer(moa, sample, single, 4, cache_salt="shared")
    assert first.prefill_reused == 0
    assert (await runner.answer(moa, sample, single, 4, cache_salt="shared")).prefill_reused > 0
    cold = await runner.answer(moa, sample, single, 4, cache_salt=runner.cold_salt(sample, single))
    assert cold.prefill_reused == 0 and cold.prefill_computed == first.prefill_computed


async def test_an_engine_that_cannot_score_gives_n_a(engine, llama_server, tmp_path):
    remote = HttpEngine(llama_server.base_url, None, tokenizer=engine.tokenizer)
    try:
        moa = _moa(remote)
        sample = datasets.load("mmlu", 1, 0)[0]
        out = tmp_path / "rows.jsonl"
        systems = runner.parse_systems("single")
        await runner.run(moa, [sample], systems, out, max_tokens=4, progress=False)
        rows = {r.sample_id: r for r in runner.read_rows(out)}
        ll = rows[sample.id + "-loglik"]
        assert ll.na and "cannot score" in ll.na and ll.score is None and ll.error is None
        assert rows[sample.id].answer and rows[sample.id].error is None
    finally:
        await remote.shutdown()
    args = argparse.Namespace(out=str(tmp_path), report_only=True)
    assert command.main(args) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| mmlu-loglik accuracy |" not in summary.splitlines()[0] or "n/a" in summary
    assert "n/a" in summary
