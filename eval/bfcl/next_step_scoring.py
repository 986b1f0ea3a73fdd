"""Score a predicted next step of a BFCL trace: by canonical call match and by its effect when executed.

The trace-in / next-step-out eval cuts a replayed trace at step k and asks an agent for step k+1. A call can
be right in more than one spelling (argument order, `5` or `5.0`, keyword or positional), so besides the
canonical comparison the prediction is run on a copy of the state at step k and judged by what it did: the
same result and the same end state (BFCL's own state checker) as the ground-truth call.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from moa_stream.tools import BfclError, ToolCall, bfcl_execute, fresh_instances

from .traces import Trace


@dataclass(frozen=True)
class NextStepScore:
    """How a predicted call compares with the trace's call at one step."""

    step: int
    expected: ToolCall
    predicted: ToolCall | None
    call_match: bool  # same name and canonical arguments
    effect_match: bool  # same result and same end state when executed on the state at this step
    error: str | None = None  # why the prediction could not run, if it could not


def canonical_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments with spelling differences removed: integral floats as ints, tuples as lists, keys sorted."""
    def norm(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list | tuple):
            return [norm(v) for v in value]
        if isinstance(value, dict):
            return {str(k): norm(v) for k, v in sorted(value.items())}
        return value

    return {k: norm(v) for k, v in sorted(arguments.items())}


def calls_match(a: ToolCall, b: ToolCall) -> bool:
    """Whether two calls are the same call up to argument order and numeric spelling."""
    return a.name == b.name and canonical_arguments(a.arguments) == canonical_arguments(b.arguments)


def state_at(trace: Trace, step: int) -> dict[str, Any]:
    """Fresh instances of the trace's classes after its first `step` ground-truth calls."""
    if not 0 <= step < len(trace.steps):
        raise BfclError(f"step {step} is outside the trace's {len(trace.steps)} steps")
    instances = fresh_instances(trace.case)
    for done in trace.steps[:step]:
        bfcl_execute(done.call, instances)
    return instances


def score_next_step(trace: Trace, step: int, predicted: ToolCall | None) -> NextStepScore:
    """Score `predicted` against the trace's call at `step` (0-based), by call match and by execution."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    expected = trace.steps[step].call
    if predicted is None:
        return NextStepScore(step, expected, None, False, False, "no call was predicted")
    before = state_at(trace, step)
    truth_state, mine = copy.deepcopy(before), copy.deepcopy(before)
    truth_result = bfcl_execute(expected, truth_state)
    try:
        result = bfcl_execute(predicted, mine)
    except Exception as e:  # a wrong name or arguments is a wrong step, not a failed eval
        return NextStepScore(step, expected, predicted, False, False, f"{type(e).__name__}: {e}")
    same_effect = _same_result(result, truth_result) and bool(state_checker(mine, truth_state)["valid"])
    return NextStepScore(step, expected, predicted, calls_match(predicted, expected), same_effect)


def _same_result(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return canonical_arguments(a) == canonical_arguments(b)
    return a == b
