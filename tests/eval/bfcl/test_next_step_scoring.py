"""The next-step scorer on BFCL's real executable classes (bfcl-eval installed with --no-deps)."""

from __future__ import annotations

import pytest

from eval.bfcl.next_step_scoring import score_next_step, state_at
from eval.bfcl.traces import load_cases, parse_call, replay
from moa_stream.tools import ToolCall
from moa_stream.tools.bfcl_classes import BfclError

pytest.importorskip("bfcl_eval")


def _case(case_id: str):
    return next(c for c in load_cases("base") if c.id == case_id)


def test_the_ground_truth_call_scores_on_both_counts_at_every_step() -> None:
    trace = replay(load_cases("base", limit=1)[0])
    for k, step in enumerate(trace.steps):
        score = score_next_step(trace, k, step.call)
        assert score.call_match and score.effect_match, (k, score)


def test_a_different_spelling_of_the_same_call_is_accepted() -> None:
    trace = replay(load_cases("base", limit=1)[0])
    k = next(i for i, s in enumerate(trace.steps) if s.call.name == "mv")
    expected = trace.steps[k].call
    reordered = ToolCall("", "mv", dict(reversed(list(expected.arguments.items()))))
    positional = parse_call(f"mv({expected.arguments['source']!r}, {expected.arguments['destination']!r})",
                            state_at(trace, k))
    for call in (reordered, positional):
        score = score_next_step(trace, k, call)
        assert score.call_match and score.effect_match, score


def test_numbers_spelled_differently_match_and_an_equivalent_call_matches_by_effect() -> None:
    trace = replay(_case("multi_turn_base_34"))
    k = next(i for i, s in enumerate(trace.steps) if s.call.name == "mean")
    numbers = trace.steps[k].call.arguments["numbers"]
    as_floats = score_next_step(trace, k, ToolCall("", "mean", {"numbers": [float(n) for n in numbers]}))
    assert as_floats.call_match and as_floats.effect_match
    # Another order of the same numbers is another call with the same result: right by effect only.
    shuffled = score_next_step(trace, k, ToolCall("", "mean", {"numbers": list(reversed(numbers))}))
    assert not shuffled.call_match and shuffled.effect_match


def test_a_call_with_another_effect_or_no_such_tool_is_rejected() -> None:
    trace = replay(load_cases("base", limit=1)[0])
    k = next(i for i, s in enumerate(trace.steps) if s.call.name == "mv")
    elsewhere = ToolCall("", "mv", {**trace.steps[k].call.arguments, "destination": "elsewhere"})
    wrong = score_next_step(trace, k, elsewhere)
    assert not wrong.call_match and not wrong.effect_match
    unknown = score_next_step(trace, k, ToolCall("", "rm_rf", {}))
    assert not unknown.effect_match and "rm_rf" in (unknown.error or "")
    assert score_next_step(trace, k, None).error == "no call was predicted"
    with pytest.raises(BfclError, match="outside"):
        state_at(trace, len(trace.steps))
