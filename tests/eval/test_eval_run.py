"""The harness end to end on the real default model: rows, summary, plot, resume, two MT-Bench turns, judge."""

from __future__ import annotations

import argparse
import json

import matplotlib.image

from eval import command, datasets, runner
from eval.judge import Judge
from moa_stream import MoA, MoAConfig


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_tiny_run_writes_rows_summary_and_plot_then_resumes(tmp_path, capsys):
    argv = ("--dataset", "nq-open:2", "--systems", "classic,staircase@4", "--out", str(tmp_path),
            "--max-tokens", "8", "--proposer-tokens", "8", "--no-progress")
    assert command.main(_args(*argv)) == 0
    rows_path = tmp_path / "rows.jsonl"
    rows = runner.read_rows(rows_path)
    samples = datasets.load("nq-open", 2, 0)
    assert {(r.sample_id, r.system) for r in rows} == {(s.id, y) for s in samples
                                                       for y in ("classic", "staircase@4")}
    for r in rows:
        assert r.answer and r.score in (0.0, 1.0) and r.ttft_s > 0 and r.total_s >= r.ttft_s
        assert r.answer_tokens > 0 and r.prefill_computed > 0
    assert all(r.chunks_ingested > 0 for r in rows if r.system == "staircase@4")
    summary = (tmp_path / "summary.md").read_text()
    assert "| classic | 2 |" in summary and "| staircase@4 | 2 |" in summary
    assert [s["system"] for s in json.loads((tmp_path / "summary.json").read_text())] == ["classic", "staircase@4"]
    assert matplotlib.image.imread(tmp_path / "plot.png").shape[2] in (3, 4)
    assert "quality vs TTFT (4 rows)" in capsys.readouterr().out

    # Resume after an interruption that tore the last row in half: only that row is redone.
    lines = rows_path.read_text().splitlines(keepends=True)
    rows_path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert command.main(_args(*argv)) == 0
    assert "1 new rows" in capsys.readouterr().err
    again = runner.read_rows(rows_path)
    assert len(again) == 4 and again[:3] == rows[:3]
    assert {(r.sample_id, r.system) for r in again} == {(r.sample_id, r.system) for r in rows}
    assert command.main(_args(*argv)) == 0  # nothing left to do
    assert "0 new rows" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert command.main(_args("--dataset", "nope", "--out", str(tmp_path))) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert command.main(_args("--systems", "classic@4", "--out", str(tmp_path))) == 2
    assert command.main(_args("--judge", str(tmp_path / "missing.yaml"), "--out", str(tmp_path))) == 2
    assert "not found" in capsys.readouterr().err
    assert command.main(_args("--report-only", "--out", str(tmp_path))) == 1  # nothing to report


async def test_mt_bench_two_turns_graded_and_compared_by_the_model_judge(engine, tmp_path):
    """Turn 2 reuses the conversation's KV; the judge (the aggregator model alone) grades both turns and compares
    against classic in both orders. With 135M parameters its verdicts may not parse (then no score), but every
    prompt really goes through the model."""
    cfg = MoAConfig.default(max_tokens=8)
    moa = MoA.from_config(cfg.model_copy(update={"layers": [cfg.layers[0][:2]]}), engines={"default": engine})
    sample = next(s for s in datasets.load("mt-bench") if s.id == "mt-bench/81")
    judge = Judge(moa, max_tokens=12)
    out = tmp_path / "rows.jsonl"
    systems = runner.parse_systems("single,classic")  # classic runs first: it is the pairwise baseline
    assert await runner.run(moa, [sample], systems, out, max_tokens=8, judge=judge, progress=False) == 2
    rows = {r.system: r for r in runner.read_rows(out)}
    assert list(rows) == ["classic", "single"]
    for r in rows.values():
        (turn2,) = r.later_turns
        assert turn2.prompt == sample.extra_turns[0] and turn2.answer
        assert turn2.prefill_carried >= 50 > r.prefill_carried  # turn 2 extends turn 1's live KV
        assert set(r.scores) <= {"judge_grade", "judge_win_vs_classic"}
    # classic: 2 grades; single: 2 grades + 2 pairwise (both orders).
    assert len(judge.replies) == 6 and all(isinstance(x, str) for x in judge.replies)
    # Each row keeps its own judge replies, so a run's verdicts can be audited afterwards.
    assert rows["classic"].judge_replies == judge.replies[:2]
    assert rows["single"].judge_replies == judge.replies[2:]
    assert engine.stats().sequences_open == 0
