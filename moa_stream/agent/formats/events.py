"""What an agent's history is made of: typed events, rendered by an agent format, appended in order."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...tools.calls import ToolCall
from ...tools.tool import Tool


@dataclass(frozen=True)
class UserTurn:
    """A message from the user."""

    text: str


@dataclass(frozen=True)
class CallEvent:
    """A call the agent made."""

    call: ToolCall


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


@dataclass(frozen=True)
class AnswerEvent:
    """A reply in words that ended the agent's turn (the request is done, or it asks the user something)."""

    text: str


@dataclass(frozen=True)
class ToolsEvent:
    """Tools offered from this point on (BFCL's `miss_func` turns reveal a function mid-episode)."""

    schemas: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, tools: Iterable[Tool]) -> ToolsEvent:
        """The event offering these tools (each as a prompt lists it)."""
        return cls(tuple(t.summary() for t in tools))


HistoryEvent = UserTurn | CallEvent | ResultEvent | ErrorEvent | AnswerEvent | ToolsEvent


def result_event(name: str, result: str) -> ResultEvent | ErrorEvent:
    """A tool's result text as a result, or as an error when it is BFCL's `{"error": ...}` and nothing else."""
    try:
        doc: Any = json.loads(result)
    except (json.JSONDecodeError, ValueError):
        return ResultEvent(name, result)
    if isinstance(doc, dict) and set(doc) == {"error"}:
        return ErrorEvent(name, str(doc["error"]))
    return ResultEvent(name, result)


def payload(text: str) -> Any:
    """A result's text as data when it is JSON (so formats can lay it out), else the text itself."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text
