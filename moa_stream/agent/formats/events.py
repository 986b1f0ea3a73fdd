"""What an agent's history is made of: typed events, rendered by an agent format, appended in order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ...bfcl_traces import TraceCall, TraceStep


@dataclass(frozen=True)
class UserTurn:
    """A message from the user."""

    text: str


@dataclass(frozen=True)
class CallEvent:
    """A call the agent made."""

    call: TraceCall


@dataclass(frozen=True)
class ResultEvent:
    """What a call returned, as the text the tool gave back."""

    name: str
    result: str


@dataclass(frozen=True)
class ErrorEvent:
    """A call that failed: the error the tool reported."""

    name: str
    error: str


HistoryEvent = UserTurn | CallEvent | ResultEvent | ErrorEvent


def result_event(name: str, result: str) -> ResultEvent | ErrorEvent:
    """A tool's result text as a result, or as an error when it is BFCL's `{"error": ...}` and nothing else."""
    try:
        doc: Any = json.loads(result)
    except (json.JSONDecodeError, ValueError):
        return ResultEvent(name, result)
    if isinstance(doc, dict) and set(doc) == {"error"}:
        return ErrorEvent(name, str(doc["error"]))
    return ResultEvent(name, result)


def step_events(step: TraceStep) -> Iterator[HistoryEvent]:
    """A trace step's call and its result (the user turn that opened it comes before, see `opening_events`)."""
    yield CallEvent(step.call)
    yield result_event(step.call.name, step.result)


def opening_events(step: TraceStep) -> Iterator[HistoryEvent]:
    """What the agent has read before it makes the step's call: the user turn that opened it, if any."""
    if step.user:
        yield UserTurn(step.user)


def trace_events(steps: Iterable[TraceStep]) -> Iterator[HistoryEvent]:
    """Every event of a run of steps, in order."""
    for step in steps:
        yield from opening_events(step)
        yield from step_events(step)


def payload(text: str) -> Any:
    """A result's text as data when it is JSON (so formats can lay it out), else the text itself."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text
