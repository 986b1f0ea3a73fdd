"""BFCL multi-turn cases replayed on BFCL's real executable classes (bfcl-eval installed with --no-deps)."""

from __future__ import annotations

import pytest

from eval.bfcl.traces import chained_steps, load_cases, parse_call, replay
from moa_stream.tools.bfcl_classes import BfclError, bfcl_execute, fresh_instances

pytest.importorskip("bfcl_eval")


def test_a_replay_reproduces_the_ground_truth_end_state() -> None:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    for case in load_cases("base", limit=5):
        trace = replay(case)
        assert len(trace.steps) == sum(len(t) for t in case.ground_truth)
        assert trace.steps[0].user == case.turns[0]
        # The parsed calls, run directly on fresh instances, reach the state BFCL's own executor reached.
        mine = fresh_instances(case)
        for step in trace.steps:
            bfcl_execute(step.call, mine)
        assert state_checker(mine, trace.instances)["valid"], case.id


def test_the_end_state_differs_when_a_call_is_left_out() -> None:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    case = load_cases("base", limit=1)[0]  # moves files around: dropping the last move changes the state
    trace = replay(case)
    mine = fresh_instances(case)
    for step in trace.steps[:-3]:
        bfcl_execute(step.call, mine)
    assert not state_checker(mine, trace.instances)["valid"]


def test_positional_arguments_get_their_parameter_names() -> None:
    case = load_cases("base", limit=1)[0]
    call = parse_call("sort('final_report.pdf')", fresh_instances(case))
    assert call.name == "sort" and call.arguments == {"file_name": "final_report.pdf"}
    assert call == parse_call("sort(file_name='final_report.pdf')", fresh_instances(case))


def test_bad_input_is_a_typed_error() -> None:
    with pytest.raises(BfclError, match="category"):
        load_cases("nope")
    with pytest.raises(BfclError, match="not a"):
        parse_call("x = 1", {})
    with pytest.raises(BfclError, match="fewer"):
        chained_steps(load_cases("base", limit=1), 500)


def test_chained_steps_reach_a_long_workflow() -> None:
    steps = chained_steps(load_cases("base", limit=12), 35)
    assert len(steps) == 35 and len({s.case_id for s in steps}) > 1


async def test_a_miss_func_trace_reveals_its_functions_at_bfcls_turn_and_the_next_step_eval_holds_them_back():
    from eval.bfcl.next_step import predict_next_steps
    from eval.bfcl.traces import opening_events, reveal_prompt
    from moa_stream import ChatFormat
    from moa_stream.agent.formats import ToolsEvent, UserTurn, agent_format
    from moa_stream.tools import ToolSet, bfcl_tools
    from tests.moa_stream.agent.test_agent_formats import tiny_bfcl_engine

    case = next(c for c in load_cases("miss_func", limit=5) if c.missed_functions)
    (turn, names), = case.missed_functions.items()
    trace = replay(case)
    at = sum(len(t) for t in case.ground_truth[:turn])  # the first step after the reveal turn
    # The turns read since the last call (one with no call to make, then BFCL's reveal prompt) open the step.
    assert trace.steps[at].revealed == names and trace.steps[at].user.endswith("\n" + reveal_prompt())
    assert all(not s.revealed for i, s in enumerate(trace.steps) if i != at)
    events = list(opening_events(trace.steps[at], bfcl_tools(case)))
    assert isinstance(events[0], ToolsEvent) and [s["name"] for s in events[0].schemas] == list(names)
    assert events[1] == UserTurn(trace.steps[at].user)

    engine = tiny_bfcl_engine()
    try:
        episode = await predict_next_steps(engine, trace, "compact", max_tokens=4)
        chat = ChatFormat(engine.tokenizer)
    finally:
        await engine.shutdown()
    assert len(episode.steps) == len(trace.steps)
    every = bfcl_tools(case)
    start = ToolSet([t for t in every if t.name not in names])
    assert episode.prefix_tokens == len(agent_format("compact", chat, start).prefix()), "held back at the start"
    assert episode.prefix_tokens < len(agent_format("compact", chat, every).prefix())
