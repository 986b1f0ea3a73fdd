"""How an agent's context shows tools, how the model writes a call, and how a result is appended: one class each.

A call format is append-only: the tool list sits in the system prompt, calls are the model's own output, and
each step's results are one new user turn appended after it. Nothing already read is ever rewritten. A new
format is a subclass with a `name`, decorated with `@register_call_format`; `call_format("hermes")` builds one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from engine import StructuralTag

from ..errors import ConfigError
from ..registry import Registry
from .calls import ParsedCall, ToolCall, ToolResult
from .toolset import ToolSet


@dataclass(frozen=True)
class ForceTool:
    """tool_choice naming one function: the model must call it."""

    name: str


ToolChoice = Literal["auto", "required", "none"] | ForceTool
"""OpenAI's tool_choice: calls optional (auto), at least one (required), none, or one named function."""


class CallFormat(ABC):
    """One way to show tools, write calls and append results (see the module docstring)."""

    name: ClassVar[str]
    call_open: ClassVar[str]  # the text that opens a call block in the model's output
    call_close: ClassVar[str]  # the text that closes it
    bare_open: ClassVar[str | None] = None  # a reply opening with this is one call written without its block

    @abstractmethod
    def system_prompt(self, tools: ToolSet, instructions: str | None = None) -> str:
        """The system prompt: the agent's instructions, then the tools and how to call them."""

    @abstractmethod
    def structured(self, tools: ToolSet, choice: ToolChoice = "auto", parallel: bool = True) -> StructuralTag | None:
        """The constraint that keeps the model's calls valid under `choice` (None: free text, no call).

        parallel=False ends the generation right after the first call (OpenAI's parallel_tool_calls=false).
        """

    @abstractmethod
    def parse(self, text: str) -> list[ParsedCall]:
        """Every call in the model's text, in order; unreadable ones carry an error (junk around them is skipped)."""

    @abstractmethod
    def render_call(self, call: ToolCall) -> str:
        """The text of a call as the model writes it (to replay a known call, or show it)."""

    @abstractmethod
    def render_results(self, results: Sequence[ToolResult]) -> str:
        """One step's results as the user-turn text appended after the model's calls (delimiters escaped)."""

    @abstractmethod
    def strip_calls(self, text: str) -> str:
        """The model's text without its call blocks (what a reader is shown as the answer)."""

    def compact(self, call: ToolCall, result: ToolResult | None, limit: int = 200) -> str:
        """A call and its result in one short line (what a tool-using proposer streams to an aggregator)."""
        import json

        args = json.dumps(call.arguments, ensure_ascii=False, default=str)
        out = f"[called {call.name}({args})"
        if result is not None:
            body = f"error: {result.error}" if result.error else result.result
            out += f" -> {body[:limit]}{'…' if len(body) > limit else ''}"
        return out + "]"


CALL_FORMATS = Registry("call format")
register_call_format = CALL_FORMATS.register  # class decorator: the format becomes selectable by its `name`


def call_format(name: str | CallFormat = "hermes") -> CallFormat:
    """The call format registered under `name` (an instance passes through)."""
    if isinstance(name, CallFormat):
        return name
    try:
        return CALL_FORMATS[name]()
    except KeyError:
        raise ConfigError(f"call format must be one of {', '.join(CALL_FORMATS)}; got {name!r}") from None
