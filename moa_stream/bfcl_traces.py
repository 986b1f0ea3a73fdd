"""BFCL v4 multi-turn cases replayed as traces: each ground-truth call executed on BFCL's own classes.

A trace is what an agent would have seen and done: the user turns, the calls (name + keyword arguments) and
the tools' results, in order. Benchmarks replay it so every mode reads and writes the same tokens, and the
next-step eval cuts it at step k. BFCL ships the data, the executable classes and the executor
(`pip install --no-deps bfcl-eval mpmath`); nothing of it is copied here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .errors import MoAStreamError

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")


class BfclError(MoAStreamError):
    """BFCL data or classes are missing or malformed; install them with `pip install --no-deps bfcl-eval mpmath`."""


@dataclass(frozen=True)
class TraceCall:
    """One call as a tool agent writes it: a function name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]

    def canonical(self) -> str:
        """Name and arguments as one stable string (sorted keys): equal calls give equal strings."""
        return f"{self.name}:{json.dumps(self.arguments, sort_keys=True, default=str)}"


@dataclass(frozen=True)
class TraceStep:
    """A step of a trace: the user turn that opened it (first step of a turn only), the call, its result."""

    call: TraceCall
    result: str
    user: str | None = None
    case_id: str = ""


@dataclass(frozen=True)
class BfclCase:
    """One multi-turn case: user turns, ground-truth calls per turn, and the classes' starting state."""

    id: str
    turns: tuple[str, ...]
    ground_truth: tuple[tuple[str, ...], ...]
    initial_config: dict[str, Any]
    involved_classes: tuple[str, ...]
    excluded_functions: tuple[str, ...] = ()

    def function_docs(self) -> list[dict[str, Any]]:
        """BFCL's JSON docs of the functions this case offers (its classes' functions, minus excluded ones)."""
        docs = [d for cls in self.involved_classes for d in _class_docs(cls)]
        return [d for d in docs if d["name"] not in self.excluded_functions]


@dataclass
class Trace:
    """A replayed case: its steps and the live class instances in their end state."""

    case: BfclCase
    steps: list[TraceStep]
    instances: dict[str, Any] = field(repr=False, default_factory=dict)


def _bfcl_root() -> Path:
    try:
        import bfcl_eval
    except ImportError as e:
        raise BfclError("bfcl-eval is not installed: run `pip install --no-deps bfcl-eval mpmath`") from e
    return Path(bfcl_eval.__file__).parent


@cache
def _class_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    if class_name not in MULTI_TURN_FUNC_DOC_FILE_MAPPING:
        raise BfclError(f"unknown BFCL class {class_name!r}; known: {sorted(MULTI_TURN_FUNC_DOC_FILE_MAPPING)}")
    path = _bfcl_root() / "data" / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def load_cases(category: str = "base", limit: int | None = None) -> list[BfclCase]:
    """The multi-turn cases of a category (base, miss_func, miss_param, long_context), in dataset order."""
    if category not in CATEGORIES:
        raise BfclError(f"unknown multi-turn category {category!r}; pick one of {', '.join(CATEGORIES)}")
    data = _bfcl_root() / "data"
    name = f"BFCL_v4_multi_turn_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in _jsonl(data / "possible_answer" / name)}
    cases = []
    for entry in _jsonl(data / name):
        turns = tuple(" ".join(m["content"] for m in turn if m["role"] == "user") for turn in entry["question"])
        cases.append(BfclCase(
            id=entry["id"], turns=turns, ground_truth=tuple(tuple(t) for t in answers[entry["id"]]),
            initial_config=entry["initial_config"], involved_classes=tuple(entry["involved_classes"]),
            excluded_functions=tuple(entry.get("excluded_function", ()))))
        if limit is not None and len(cases) >= limit:
            break
    return cases


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def parse_call(source: str, instances: dict[str, Any]) -> TraceCall:
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
    return TraceCall(name, arguments)


def fresh_instances(case: BfclCase) -> dict[str, Any]:
    """New instances of the case's classes loaded with its initial state (BFCL's own classes, not copies)."""
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES

    instances = {}
    for class_name in case.involved_classes:
        instance = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)()
        if class_name not in STATELESS_CLASSES:
            instance._load_scenario(json.loads(json.dumps(case.initial_config.get(class_name, {}))))
        instances[class_name] = instance
    return instances


def replay(case: BfclCase) -> Trace:
    """Execute the case's ground-truth calls in order with BFCL's executor on fresh instances."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    # The executor caches instances in its module globals by this name: a fresh one per replay, dropped after.
    replay_name = f"moa_stream_replay_{uuid.uuid4().hex}"
    steps: list[TraceStep] = []
    instances: dict[str, Any] = {}
    pending: list[str] = []  # user turns not yet followed by a call (a turn may have none)
    try:
        for user, calls in zip(case.turns, case.ground_truth, strict=True):
            pending.append(user)
            results, instances = multi_turn_utils.execute_multi_turn_func_call(
                list(calls), case.initial_config, list(case.involved_classes), replay_name, case.id)
            for source, result in zip(calls, results, strict=True):
                opened = "\n".join(u for u in pending if u) if pending else None
                steps.append(TraceStep(parse_call(source, instances), result, opened, case.id))
                pending = []
    finally:
        for key in [k for k in vars(multi_turn_utils) if k.startswith(replay_name)]:
            delattr(multi_turn_utils, key)
    return Trace(case, steps, instances)


def execute(call: TraceCall, instances: dict[str, Any]) -> Any:
    """Run one call on the instance whose class has the method (as BFCL's executor resolves names)."""
    for instance in instances.values():
        if not call.name.startswith("_") and callable(getattr(instance, call.name, None)):
            return getattr(instance, call.name)(**call.arguments)
    raise BfclError(f"no involved class has a method {call.name!r}")


def chained_steps(cases: list[BfclCase], steps: int) -> list[TraceStep]:
    """At least `steps` steps from replaying cases one after another (long workflows from short cases)."""
    out: list[TraceStep] = []
    for case in cases:
        out.extend(replay(case).steps)
        if len(out) >= steps:
            return out[:steps]
    raise BfclError(f"{len(cases)} cases give {len(out)} steps, fewer than the {steps} asked for; pass more cases")
