"""The BFCL next-step eval end to end on a tiny random model: rows, summary, plot, resume, the command's hook."""

from __future__ import annotations

import argparse
import json

import matplotlib.image
import pytest
from rich.console import Console

from eval import command
from eval.bfcl import driver
from eval.bfcl import next_step_eval as bfcl_next_step
from eval.bfcl.traces import load_cases
from moa_stream import MoA, MoAConfig
from tests.moa_stream.agent.test_agent_formats import tiny_bfcl_engine

pytest.importorskip("bfcl_eval")

FORMATS = ["chat", "thread", "compact"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


async def test_one_case_runs_every_format_and_system_writes_rows_and_summary_then_resumes(tmp_path, capsys):
    case = next(c for c in load_cases("base", limit=5) if c.id == "multi_turn_base_4")  # 3 steps: the shortest
    moa = MoA(MoAConfig.default(proposers=2, max_tokens=4), {"default": tiny_bfcl_engine()})
    rows_path = tmp_path / "rows.jsonl"
    try:
        cases = [("bfcl-multi-turn", case)]
        written = await bfcl_next_step.run(moa, cases, FORMATS, ["single", "moa"], rows_path, 4, progress=False)
        assert written == 6
        rows = bfcl_next_step.read_episodes(rows_path)
        assert {r.key for r in rows} == {(case.id, f, s) for f in FORMATS for s in ("single", "moa")}
        for r in rows:
            assert r.error is None and r.prefix_tokens > 0 and r.state_match in (True, False) and len(r.steps) == 3
            for s in r.steps:
                assert s.prefill_computed >= s.appended + s.cue_tokens and s.ttft_s > 0
                assert s.expected["name"] and (len(s.proposals) == 2) == (r.system == "moa")
        assert bfcl_next_step.write_report(tmp_path, Console(stderr=True)) == 0
        summary = (tmp_path / "summary.md").read_text()
        for f in FORMATS:
            assert f"| {f} | single | 1 | 3 |" in summary and f"| {f} | moa | 1 | 3 |" in summary
        doc = json.loads((tmp_path / "summary.json").read_text())
        assert [(d["format"], d["system"]) for d in doc] == [(r.format, r.system) for r in rows]
        assert all(d["call_match"]["n"] == 3 and d["prefill_per_step"]["mean"] > 0 for d in doc)
        assert all(d["repeats_last_call"]["n"] == 2 for d in doc)  # steps 1 and 2 have a call before them
        paired = json.loads((tmp_path / "paired.json").read_text())
        assert [p["format"] for p in paired] == FORMATS
        by_key = {r.key: r for r in rows}
        for p in paired:  # moa - single over the same 3 steps of the one case
            moa_row, single_row = by_key[(case.id, p["format"], "moa")], by_key[(case.id, p["format"], "single")]
            diff = sum(a.call_match - b.call_match for a, b in zip(moa_row.steps, single_row.steps, strict=True)) / 3
            assert (p["cases"], p["steps"]) == (1, 3) and p["call_match"]["mean"] == pytest.approx(diff)
        assert "| chat | moa - single | 1 | 3 |" in summary
        assert matplotlib.image.imread(tmp_path / "plot.png").shape[2] in (3, 4)

        # Resume after an interruption that tore the last row: only that episode is redone.
        lines = rows_path.read_text().splitlines(keepends=True)
        rows_path.write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
        assert await bfcl_next_step.run(moa, cases, FORMATS, ["single", "moa"], rows_path, 4, progress=False) == 1
        assert {r.key for r in bfcl_next_step.read_episodes(rows_path)} == {r.key for r in rows}
    finally:
        await moa.aclose()

    # The eval command routes a bfcl-multi-turn dataset here (report only: no model is loaded).
    argv = ("--dataset", "bfcl-multi-turn:1", "--out", str(tmp_path), "--report-only")
    assert command.main(_args(*argv)) == 0
    assert "BFCL next step by format (6 episodes)" in capsys.readouterr().out


def test_bad_formats_or_systems_exit_2(tmp_path, capsys):
    base = ("--dataset", "bfcl-multi-turn:1", "--out", str(tmp_path))
    assert command.main(_args(*base, "--formats", "chat,nope")) == 2
    assert "--formats must be" in capsys.readouterr().err
    assert command.main(_args(*base, "--systems", "classic")) == 2
    assert "--systems for bfcl-multi-turn" in capsys.readouterr().err
    assert driver.category("bfcl-multi-turn-long_context") == "long_context"
    assert driver.category("bfcl-multi-turn") == "base"


def test_cases_are_a_seeded_subset_in_dataset_order_and_a_smaller_one_is_inside_a_larger_one():
    two = [c.id for c in driver.pick_cases("bfcl-multi-turn", 2, 1)]
    assert two == [c.id for c in driver.pick_cases("bfcl-multi-turn", 2, 1)] == ["multi_turn_base_34",
                                                                                          "multi_turn_base_145"]
    assert {c.id for c in driver.pick_cases("bfcl-multi-turn", 1, 1)} <= set(two)
    assert len(driver.pick_cases("bfcl-multi-turn-miss_func", None, 0)) == len(load_cases("miss_func"))
