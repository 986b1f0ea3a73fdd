"""The eval harness: real dataset rows from installed packages, hand-checked scorers, a tiny resumable run."""

from __future__ import annotations

import json

import pytest

from eval import datasets, report, runner, scorers
from eval.judge import Judge, parse_rating, parse_verdict
from moa_stream import MoA, MoAConfig


@pytest.mark.parametrize(("name", "kind"), [("nq-open", "qa"), ("mmlu", "mc"), ("openbookqa", "mc"),
                                            ("truthfulqa", "qa"), ("asdiv", "math"), ("mt-bench", "open")])
def test_each_loader_reads_real_rows(name, kind):
    samples = datasets.load(name, limit=5, seed=1)
    assert len(samples) == 5 and all(s.kind == kind and s.prompt for s in samples)
    assert len({s.id for s in samples}) == 5
    if kind != "open":
        assert all(s.answers for s in samples)
    assert datasets.load(name, limit=5, seed=1) == samples  # deterministic subset
    assert datasets.load(name, limit=5, seed=2) != samples


def test_mmlu_rows_carry_their_correct_letter():
    s = datasets.load("mmlu")[0]
    assert "D. $0 $25000 $0" in s.prompt and s.answers[0] == "D"


def test_mt_bench_has_80_two_turn_questions_with_references():
    samples = datasets.load("mt-bench")
    assert len(samples) == 80 and all(len(s.extra_turns) == 1 for s in samples)
    assert sum(1 for s in samples if s.reference) >= 30  # math, reasoning and coding carry references


def test_user_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "Capital of France?", "answer": "Paris"}, {"prompt": "2+2?", "answer": "4"},
            {"prompt": "Pick red.", "choices": ["blue", "red"], "answer": "red"}, {"prompt": "Write a poem."}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    samples = datasets.load(str(path))
    assert [s.kind for s in samples] == ["qa", "math", "mc", "open"]
    assert samples[2].answers == ("B",) and "B. red" in samples[2].prompt


def test_bad_dataset_inputs_are_typed_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match="unknown dataset"):
        datasets.load("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "x"}\n')
    with pytest.raises(datasets.DatasetError, match="needs a non-empty 'prompt'"):
        datasets.load(str(bad))


def test_scorers_on_hand_checked_cases():
    assert scorers.normalize("The  Eiffel Tower!") == "eiffel tower"
    assert scorers.exact_match("the Nine.", ["Nine"]) == 1.0
    assert scorers.exact_match("Nine generals", ["Nine"]) == 0.0
    assert scorers.contains("There are nine five-star generals.", ["Nine"]) == 1.0
    assert scorers.contains("Ninety", ["Nine"]) == 0.0
    assert scorers.extract_letter("The answer is (C).") == "C"
    assert scorers.extract_letter("B. quit eating lunch out") == "B"
    assert scorers.letter_match("Option D is right", "D. $0") == 1.0
    assert scorers.letter_match("I think A.", "B") == 0.0
    assert scorers.numeric_match("So they have 16 oranges.", "16 oranges") == 1.0
    assert scorers.numeric_match("nine apples", "9 apples") == 1.0
    assert scorers.numeric_match("1,250 people", "1250") == 1.0
    assert scorers.numeric_match("15", "16") == 0.0
    assert scorers.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert scorers.rouge_l("cat sat", "dog ran") == 0.0
    assert 0 < scorers.rouge_l("the cat sat", "the cat ran away") < 1


def test_judge_reply_parsing():
    assert parse_verdict("Both are fine but B is clearer. [[B]]") == "B"
    assert parse_verdict("[[C]]") == "C" and parse_verdict("no idea") is None
    assert parse_rating("Rating: [[7]]") == 7.0 and parse_rating("Rating: 11") is None


def test_estimate_and_systems():
    e = report.estimate([1.0, 0.0, 1.0, 0.0])
    assert e.mean == 0.5 and e.n == 4 and e.ci95 == pytest.approx(1.96 * 0.57735 / 2, rel=1e-3)
    assert [s.name for s in runner.parse_systems("single, staircase@8")] == ["single", "staircase@8"]
    with pytest.raises(ValueError, match="unknown system"):
        runner.parse_systems("fast")
    with pytest.raises(ValueError, match="chunk size"):
        runner.parse_systems("classic@8")


async def test_tiny_run_writes_rows_summary_and_plot_then_resumes(engine, tmp_path):
    cfg = MoAConfig.default(max_tokens=8)
    cfg = cfg.model_copy(update={"layers": [cfg.layers[0][:2]]})
    moa = MoA.from_config(cfg, engines={"default": engine})
    samples = datasets.load("nq-open", limit=2, seed=0)
    systems = runner.parse_systems("classic,staircase@4")
    out = tmp_path / "rows.jsonl"
    assert await runner.run(moa, samples, systems, out, max_tokens=8, progress=False) == 4
    rows = runner.read_rows(out)
    assert {(r["sample_id"], r["system"]) for r in rows} == {(s.id, y.name) for s in samples for y in systems}
    assert all(r["ttft_s"] is not None and r["score"] in (0.0, 1.0) for r in rows)
    # Resume: a second run finds every pair done and writes nothing.
    assert await runner.run(moa, samples, systems, out, max_tokens=8, progress=False) == 0
    summaries = report.summarize(rows)
    assert [s.system for s in summaries] == ["classic", "staircase@4"]
    assert summaries[0].agreement_with_classic.mean == 1.0
    png = report.plot(summaries, tmp_path / "plot.png")
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[2] in (3, 4)
    assert "staircase@4" in report.markdown(summaries)
    assert engine.stats().sequences_open == 0


async def test_judge_runs_on_the_model(engine):
    """The judge's verdicts come from the real model; with 135M parameters they may be missing (None)."""
    moa = MoA.from_config(MoAConfig.default(max_tokens=8), engines={"default": engine})
    judge = Judge(moa, max_tokens=16)
    win = await judge.pairwise("What is 2+2?", "4", "5")
    grade = await judge.grade("What is 2+2?", "4", reference="4")
    assert win is None or 0.0 <= win <= 1.0
    assert grade is None or 0.0 <= grade <= 1.0
    assert engine.stats().sequences_open == 0
