"""BFCL v4 multi-turn cases replayed as traces: each ground-truth call executed on BFCL's own classes.

A trace is what an agent would have seen and done: the user turns, the calls (name + keyword arguments) and
the tools' results, in order. Benchmarks replay it so every mode reads and writes the same tokens, and the
next-step eval cuts it at step k. BFCL ships the data, the executable classes and the executor
(`pip install --no-deps bfcl-eval mpmath`); nothing of it is copied here.
"""

from __future__ import annotations

import ast
import inspect
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_stream.agent.formats import CallEvent, HistoryEvent, ToolsEvent, UserTurn, result_event
from moa_stream.tools import BfclCase, BfclError, ToolCall, ToolSet, bfcl_root

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")


@dataclass(frozen=True)
class TraceStep:
    """A step of a trace: the user turn that opened it (first step of a turn only), the call, its result."""

    call: ToolCall
    result: str
    user: str | None = None
    case_id: str = ""
    revealed: tuple[str, ...] = ()  # functions BFCL revealed at the turn that opened this step (miss_func)


@dataclass
class Trace:
    """A replayed case: its steps and the live class instances in their end state."""

    case: BfclCase
    steps: list[TraceStep]
    instances: dict[str, Any] = field(repr=False, default_factory=dict)


def load_cases(category: str = "base", limit: int | None = None) -> list[BfclCase]:
    """The multi-turn cases of a category (base, miss_func, miss_param, long_context), in dataset order."""
    if category not in CATEGORIES:
        raise BfclError(f"unknown multi-turn category {category!r}; pick one of {', '.join(CATEGORIES)}")
    data = bfcl_root() / "data"
    name = f"BFCL_v4_multi_turn_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in _jsonl(data / "possible_answer" / name)}
    cases = []
    for entry in _jsonl(data / name):
        turns = tuple(" ".join(m["content"] for m in turn if m["role"] == "user") for turn in entry["question"])
        cases.append(BfclCase(
            id=entry["id"], turns=turns, ground_truth=tuple(tuple(t) for t in answers[entry["id"]]),
            initial_config=entry["initial_config"], involved_classes=tuple(entry["involved_classes"]),
            excluded_functions=tuple(entry.get("excluded_function", ())),
            missed_functions={int(k): tuple(v) for k, v in entry.get("missed_function", {}).items()}))
        if limit is not None and len(cases) >= limit:
            break
    return cases


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def parse_call(source: str, instances: dict[str, Any], call_id: str = "") -> ToolCall:
    """A BFCL call string (`mv(source='a', destination='b')`, positional args allowed) as name + keywords."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as e:
        raise BfclError(f"not a call: {source!r} ({e.msg})") from e
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise BfclError(f"not a plain function call: {source!r}")
    name = node.func.id
    arguments = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    if node.args:
        method = next((getattr(i, name) for i in instances.values() if hasattr(i, name)), None)
        if method is None:
            raise BfclError(f"{source!r}: no involved class has a method {name!r}")
        params = list(inspect.signature(method).parameters)
        for param, value in zip(params, node.args, strict=False):
            arguments[param] = ast.literal_eval(value)
    return ToolCall(call_id, name, arguments)


def replay(case: BfclCase) -> Trace:
    """Execute the case's ground-truth calls in order with BFCL's executor on fresh instances."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    # The executor caches instances in its module globals by this name: a fresh one per replay, dropped after.
    replay_name = f"moa_stream_replay_{uuid.uuid4().hex}"
    steps: list[TraceStep] = []
    instances: dict[str, Any] = {}
    pending: list[str] = []  # user turns not yet followed by a call (a turn may have none)
    revealed: tuple[str, ...] = ()  # functions revealed since the last step
    try:
        for k, (user, calls) in enumerate(zip(case.turns, case.ground_truth, strict=True)):
            if k in case.missed_functions:  # BFCL's reveal turn: its own prompt, the functions offered from now on
                user, revealed = reveal_prompt(), revealed + case.missed_functions[k]
            pending.append(user)
            results, instances = multi_turn_utils.execute_multi_turn_func_call(
                list(calls), case.initial_config, list(case.involved_classes), replay_name, case.id)
            for source, result in zip(calls, results, strict=True):
                opened = "\n".join(u for u in pending if u) if pending else None
                steps.append(TraceStep(parse_call(source, instances, f"call_{len(steps)}_0"), result, opened, case.id,
                                       revealed))
                pending, revealed = [], ()
    finally:
        for key in [k for k in vars(multi_turn_utils) if k.startswith(replay_name)]:
            delattr(multi_turn_utils, key)
    return Trace(case, steps, instances)


def chained_steps(cases: list[BfclCase], steps: int) -> list[TraceStep]:
    """At least `steps` steps from replaying cases one after another (long workflows from short cases)."""
    out: list[TraceStep] = []
    for case in cases:
        out.extend(replay(case).steps)
        if len(out) >= steps:
            return out[:steps]
    raise BfclError(f"{len(cases)} cases give {len(out)} steps, fewer than the {steps} asked for; pass more cases")


def reveal_prompt() -> str:
    """BFCL's user message for the turn that reveals held-back functions."""
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC

    return str(DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC)


def step_events(step: TraceStep) -> Iterator[HistoryEvent]:
    """A trace step's call and its result (the user turn that opened it comes before, see `opening_events`)."""
    yield CallEvent(step.call)
    yield result_event(step.call.name, step.result)


def opening_events(step: TraceStep, tools: ToolSet | None = None) -> Iterator[HistoryEvent]:
    """What the agent has read before it makes the step's call: the functions revealed since the last call (their
    schemas from `tools`, the case's whole set), then the user turns read since then, if any (a reveal turn's
    prompt among them)."""
    if step.revealed and tools is not None:
        yield ToolsEvent.of(t for t in tools if t.name in step.revealed)
    if step.user:
        yield UserTurn(step.user)


def trace_events(steps: Iterable[TraceStep]) -> Iterator[HistoryEvent]:
    """Every event of a run of steps, in order."""
    for step in steps:
        yield from opening_events(step)
        yield from step_events(step)
