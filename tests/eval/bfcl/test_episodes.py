"""Whole BFCL episodes: BFCL's own checker on the agent's calls, miss_func reveals, the eval's rows and summary.

The episode runs on a tiny random model (what it says is noise; what is checked is the mechanics); the checker is
BFCL's own, fed the ground truth's calls written the way the episode writes the agent's.
"""

from __future__ import annotations

import argparse
import json

import pytest
from rich.console import Console

from eval import command
from eval.bfcl import episode_eval
from eval.bfcl.episodes import _split_tools, call_source, check, play
from eval.bfcl.traces import load_cases, parse_call
from moa_stream import MoA, MoAConfig
from moa_stream.tools import fresh_instances
from tests.moa_stream.agent.test_agent_formats import tiny_bfcl_engine

pytest.importorskip("bfcl_eval")


def _truth_as_agent_calls(case) -> list[list[list[str]]]:
    """The ground truth re-written as the episode writes an agent's calls: one call a step, BFCL's syntax."""
    instances = fresh_instances(case)
    return [[[call_source(parse_call(src, instances))] for src in turn] for turn in case.ground_truth]


def test_bfcls_checker_passes_the_ground_truth_and_fails_a_wrong_call():
    case = load_cases("base", limit=1)[0]
    truth = _truth_as_agent_calls(case)
    assert check(case, truth)["valid"] is True
    wrong = [list(turn) for turn in truth]
    wrong[0] = [["pwd()"]]  # a call that changes nothing where the first turn had work to do
    verdict = check(case, wrong)
    assert verdict["valid"] is False and verdict["error_type"].startswith("multi_turn:")
    assert check(case, truth[:1])["valid"] is True, "a prefix of the turns is checked on its own"


def test_miss_func_holds_the_missing_function_back_until_its_turn():
    case = next(c for c in load_cases("miss_func", limit=5) if c.missed_functions)
    (turn, names), = case.missed_functions.items()
    start, later = _split_tools(case)
    assert not set(names) & set(start.names), "not offered at the start"
    assert later[turn].names == list(names)
    assert case.turns[turn] == "", "BFCL's reveal turn has no user message of its own"


async def test_an_episode_plays_every_turn_reveals_on_time_and_scores_no_call_turns():
    case = next(c for c in load_cases("miss_func", limit=5) if c.missed_functions)
    engine = tiny_bfcl_engine()
    try:
        result = await play(engine, case, "compact", max_tokens=8, max_steps=1)
    finally:
        await engine.shutdown()
    assert [t.turn for t in result.turns] == list(range(len(case.turns)))
    (turn, names), = case.missed_functions.items()
    assert [t.revealed for t in result.turns] == [list(names) if k == turn else [] for k in range(len(case.turns))]
    for t, truth in zip(result.turns, case.ground_truth, strict=True):
        assert t.expected_calls == len(truth)
        assert (t.asked is None) == bool(truth) and (t.passed is None) == (not truth)
        assert t.steps == 1 and t.prefill_computed == sum(t.step_prefill) > 0
    later = [n for t in result.turns[1:] for n in t.step_prefill]
    assert max(later) < result.prefix_tokens / 4, "a later step computes its own tokens, not the log again"
    assert result.valid is False, "a random model does not solve a BFCL case"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


async def test_the_episode_eval_writes_rows_a_summary_and_resumes(tmp_path):
    case = next(c for c in load_cases("base", limit=5) if c.id == "multi_turn_base_4")
    moa = MoA(MoAConfig.default(proposers=2, max_tokens=4), {"default": tiny_bfcl_engine()})
    rows_path = tmp_path / "rows.jsonl"
    systems = ["single", "moa"]
    try:
        run = [("bfcl-multi-turn", case)], ["chat", "compact"], systems, rows_path, 4
        assert await episode_eval.run(moa, *run, progress=False) == 4
        assert await episode_eval.run(moa, *run, progress=False) == 0, "a resumed run skips what is done"
    finally:
        await moa.aclose()
    rows = episode_eval.read_episodes(rows_path)
    assert {r.key for r in rows} == {(case.id, f, s) for f in ("chat", "compact") for s in systems}
    assert all(r.error is None and len(r.turns) == len(case.turns) for r in rows)
    # A MoA step also pays for its proposers' forks: cue and moves, on top of the aggregator's.
    by = {(r.format, r.system): r for r in rows}
    for fmt in ("chat", "compact"):
        single, mixed = by[fmt, "single"], by[fmt, "moa"]
        assert sum(t.decode_tokens for t in mixed.turns) > sum(t.decode_tokens for t in single.turns)
    assert episode_eval.write_report(tmp_path, Console(stderr=True)) == 0
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert [(d["format"], d["system"]) for d in doc] == [(r.format, r.system) for r in rows]
    assert all(d["episodes"] == 1 and d["tokens_per_step"]["mean"] > 0 for d in doc)
    assert "| chat | single | 1 |" in (tmp_path / "summary.md").read_text()


def test_the_command_sends_episodes_to_the_episode_eval_and_checks_its_systems(tmp_path, capsys):
    args = _args("--dataset", "bfcl-multi-turn:1", "--episodes", "--systems", "classic", "--out", str(tmp_path))
    assert command.main(args) == 2
    assert "--systems with --episodes" in capsys.readouterr().err
