"""Whole BFCL multi-turn episodes: the agent's own calls run on BFCL's classes, scored by BFCL's own checker.

One Agent on an agent format's event log plays a case end to end: each user turn is appended to its one live
sequence, the agent calls tools (executed on the case's BFCL instances, so its state carries from turn to turn)
until it replies in words or reaches the step limit. A `miss_func` case holds its missing functions back: at the
turn BFCL reveals them, the agent reads a ToolsEvent and BFCL's own user prompt for it, as BFCL's handler does.
The calls, per turn and step, go to `bfcl_eval`'s `multi_turn_checker` (state and response checks, turn by turn);
turns whose ground truth has no call score whether the agent called nothing (asked or explained instead).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import Engine, SamplingParams
from moa_stream import Agent, AgentConfig, AgentDone
from moa_stream.tools import BfclCase, ToolCall, ToolSet, bfcl_tools, fresh_instances

MAX_STEPS = 8  # steps a turn may take (BFCL's own handler allows 20; a 2-core CPU cannot afford it)


@dataclass
class TurnRow:
    """One user turn of an episode as the agent played it."""

    turn: int
    revealed: list[str]  # functions offered from this turn on (miss_func)
    calls: list[str]  # the agent's readable calls in BFCL's syntax, in order
    steps: int
    finish: str
    answer: str
    expected_calls: int  # ground-truth calls of the turn
    passed: bool | None  # BFCL's checks pass through this turn (None: the turn has no ground-truth call)
    asked: bool | None  # no ground-truth call: the agent called nothing (None: the turn has calls to make)
    prefill_computed: int  # tokens computed in the turn: its user turn, each step's cue and events (turn 0: and
    decode_tokens: int  # the prefix's computed part)
    step_prefill: list[int] = field(default_factory=list)  # the same per step
    ttft_s: float | None = None


@dataclass
class EpisodeResult:
    """A case played end to end, with BFCL's verdict."""

    case_id: str
    format: str
    valid: bool  # BFCL's multi_turn_checker: every turn's state and responses match the ground truth's
    error_type: str | None
    error_message: str | None
    prefix_tokens: int
    prefix_computed: int
    turns: list[TurnRow]
    total_s: float


def call_source(call: ToolCall) -> str:
    """A call in BFCL's syntax (`mv(source='a', destination='b')`), as its checker executes it."""
    return f"{call.name}({', '.join(f'{k}={v!r}' for k, v in call.arguments.items())})"


def _split_tools(case: BfclCase) -> tuple[ToolSet, dict[int, ToolSet]]:
    """The tools shown at the start, and those each later turn reveals, all bound to one live set of instances."""
    every = bfcl_tools(case, fresh_instances(case))
    start = {d["name"] for d in case.function_docs(0)}
    later = {k: ToolSet([t for t in every if t.name in names], timeout=every.timeout)
             for k, names in case.missed_functions.items()}
    return ToolSet([t for t in every if t.name in start], timeout=every.timeout), later


def check(case: BfclCase, per_turn: Sequence[Sequence[Sequence[str]]]) -> dict[str, Any]:
    """BFCL's multi_turn_checker on the first len(per_turn) turns (each turn: its steps, each step: its calls)."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    name = f"moa_stream_check_{uuid.uuid4().hex}"  # BFCL caches instances in module globals under this name
    entry = {"id": case.id, "initial_config": case.initial_config, "involved_classes": list(case.involved_classes)}
    try:
        return multi_turn_checker([[list(step) for step in turn if step] for turn in per_turn],
                                  [list(t) for t in case.ground_truth[:len(per_turn)]], entry,
                                  case.id.rsplit("_", 1)[0], name)
    finally:
        for key in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
            delattr(multi_turn_utils, key)


async def play(engine: Engine, case: BfclCase, fmt: str, *, max_tokens: int = 128, max_steps: int = MAX_STEPS,
               proposers: Sequence[AgentConfig] = (), cache_salt: str | None = None) -> EpisodeResult:
    """Play `case` end to end with one greedy agent on the `fmt` event log (with `proposers`: each step after
    their moves, MoA), then score it with BFCL's checker."""
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC

    t0 = time.perf_counter()
    tools, later = _split_tools(case)
    agent = Agent(engine, tools, format=fmt, sampling=SamplingParams(max_tokens=max_tokens),
                  parallel_calls=False, max_steps=max_steps, cache_salt=cache_salt, name=f"bfcl-{fmt}",
                  proposers=proposers)
    turns: list[TurnRow] = []
    per_turn: list[list[list[str]]] = []
    prefix_tokens = prefix_computed = 0
    try:
        for k, user in enumerate(case.turns):
            revealed = later.get(k)
            if revealed is not None:
                await agent.reveal(revealed)
                user = user or DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
            stream = agent.run(user) if k == 0 else agent.send(user)
            done = [ev async for ev in stream if isinstance(ev, AgentDone)][-1]
            steps = [[call_source(c)] for c in done.calls if c.name in agent.tools]
            per_turn.append(steps)
            m = done.metrics
            if k == 0:  # the first turn opened the log on its prefix: counted apart (the prefix cache may hold it)
                assert agent.slot.seq is not None
                prefix_tokens = len(agent.context.fmt.prefix())  # type: ignore[attr-defined]
                prefix_computed = prefix_tokens - engine.seq_stats(agent.slot.seq).prefill_reused
            expected = len(case.ground_truth[k])
            turns.append(TurnRow(
                k, [t.name for t in revealed or ()], [s[0] for s in steps], len(m.steps), m.finish, done.answer,
                expected, None, None if expected else not steps, m.prefill_computed, m.decode_tokens,
                [s.prefill_computed for s in m.steps], m.ttft_s))
    finally:
        await agent.aclose()
    for k, row in enumerate(turns):
        if row.expected_calls:
            row.passed = bool(check(case, per_turn[:k + 1])["valid"])
    verdict = check(case, per_turn)
    return EpisodeResult(case.id, fmt, bool(verdict["valid"]), verdict.get("error_type"),
                         verdict.get("error_message"), prefix_tokens, prefix_computed, turns,
                         time.perf_counter() - t0)
