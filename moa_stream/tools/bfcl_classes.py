"""BFCL's executable classes (bfcl-eval): a case's classes, their function docs, fresh instances, one call run.

What the `bfcl:<Class>` toolsets need; replaying BFCL's multi-turn traces is the harness's (eval/bfcl/traces.py).
BFCL ships the data, the executable classes and the executor (`pip install --no-deps bfcl-eval mpmath`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import MoAStreamError
from .calls import ToolCall


class BfclError(MoAStreamError):
    """BFCL data or classes are missing or malformed; install them with `pip install --no-deps bfcl-eval mpmath`."""


@dataclass(frozen=True)
class BfclCase:
    """One multi-turn case: user turns, ground-truth calls per turn, and the classes' starting state."""

    id: str
    turns: tuple[str, ...]
    ground_truth: tuple[tuple[str, ...], ...]
    initial_config: dict[str, Any]
    involved_classes: tuple[str, ...]
    excluded_functions: tuple[str, ...] = ()
    missed_functions: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # miss_func: revealed at turn k

    def function_docs(self, turn: int | None = None) -> list[dict[str, Any]]:
        """BFCL's JSON docs of the functions this case offers (its classes' functions, minus excluded ones); with
        `turn`, only those shown by then (a miss_func case holds functions back until the turn that reveals them)."""
        hidden = {n for k, names in self.missed_functions.items() if turn is not None and k > turn for n in names}
        docs = [d for cls in self.involved_classes for d in _class_docs(cls)]
        return [d for d in docs if d["name"] not in self.excluded_functions and d["name"] not in hidden]


def bfcl_root() -> Path:
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
    path = bfcl_root() / "data" / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


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


def bfcl_execute(call: ToolCall, instances: dict[str, Any]) -> Any:
    """Run one call on the instance whose class has the method (as BFCL's executor resolves names)."""
    for instance in instances.values():
        if not call.name.startswith("_") and callable(getattr(instance, call.name, None)):
            return getattr(instance, call.name)(**call.arguments)
    raise BfclError(f"no involved class has a method {call.name!r}")
