"""A tool call as the model wrote it, the call the agent runs, and the result it appends (also stream events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ParsedCall:
    """A call found in model text: a name and arguments, or why the text there was not a valid call."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the call's text could not be read (the model is told so)


@dataclass(frozen=True)
class ToolCall:
    """A call the agent runs: `id` ties it to its ToolResult (`call_<step>_<n>`)."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolResult:
    """What a call returned (as text the model reads) or the error it met; never raised, always appended."""

    id: str
    name: str
    result: str = ""
    error: str | None = None
    cached: bool = False  # answered by the tool cache, not run
    speculated: bool = False  # taken from a call started before the model finished writing it
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the call ran without error."""
        return self.error is None
