"""OpenAI tool calling over the MoA pipeline: the request's tools, the conversation's calls and results, the reply.

The tools join the conversation as its system prompt (every agent sees them: proposers propose calls, the
aggregator writes the one the client gets), the aggregator's answer is constrained by the call format's
structural tag, and its calls go back as `tool_calls`, streamed as each one completes. Assistant calls and
`tool` messages a client sends back are rendered in the same call format, so a re-sent conversation reads
exactly as the model wrote it and its prefix is served from the cache.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine import StructuralTag
from moa_stream.tools import CallFormat, ForceTool, Tool, ToolCall, ToolChoice, ToolError, ToolResult, ToolSet
from moa_stream.tools.call_stream import CallPiece, CallStream, TextPiece

from .errors import APIError

# ---------------------------------------------------------------------------------------------- wire models


class FunctionSpec(BaseModel):
    """A function the model may call: its name, description and JSON schema of parameters."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    """One entry of `tools` (only function tools exist)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionSpec


class FunctionName(BaseModel):
    """The function a named tool_choice forces."""

    name: str


class NamedToolChoice(BaseModel):
    """tool_choice `{"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: FunctionName


ToolChoiceSpec = Literal["auto", "none", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    """A call's function: its name and its arguments as JSON text (OpenAI's wire format)."""

    name: str
    arguments: str


class MessageToolCall(BaseModel):
    """One call in an assistant message."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


# ---------------------------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class ToolRequest:
    """A request's tools, ready to run: the set, the choice, whether several calls may come, and the format."""

    tools: ToolSet
    choice: ToolChoice
    parallel: bool
    fmt: CallFormat

    @classmethod
    def of(cls, tools: Sequence[ToolSpec] | None, choice: ToolChoiceSpec | None, parallel: bool | None,
           fmt: CallFormat) -> ToolRequest | None:
        """The request's tools (None without any); a 400 APIError for a bad schema or choice."""
        if not tools:
            if choice not in (None, "none"):
                raise APIError(400, "tool_choice needs tools: send `tools` or drop `tool_choice`", param="tool_choice")
            return None
        declared: list[Tool] = []
        for i, spec in enumerate(tools):
            try:
                declared.append(Tool.from_openai(spec.model_dump(exclude_none=True)))
            except ToolError as e:
                raise APIError(400, f"tools[{i}]: {e}", param=f"tools[{i}].function") from None
        names = [t.name for t in declared]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise APIError(400, f"tools: each function name must be unique, {twice} repeat", param="tools")
        toolset = ToolSet(declared)
        resolved: ToolChoice = "auto" if choice is None else (
            ForceTool(choice.function.name) if isinstance(choice, NamedToolChoice) else choice)
        if isinstance(resolved, ForceTool) and resolved.name not in toolset:
            raise APIError(400, f"tool_choice names {resolved.name!r}, which is not among the tools {names}",
                           param="tool_choice")
        return cls(toolset, resolved, parallel is not False, fmt)

    def structured(self) -> StructuralTag | None:
        """The constraint on the answer: valid calls of these tools, as the choice allows."""
        return self.fmt.structured(self.tools, self.choice)

    def system_prompt(self, instructions: str | None) -> str:
        """The client's system text (if any) with the tools and how to call them."""
        return self.fmt.system_prompt(self.tools, instructions)

    def calls_of(self, answer: str) -> tuple[str | None, list[MessageToolCall]]:
        """The answer's text without call blocks (None if empty) and its calls in OpenAI's wire format."""
        if self.choice == "none":
            return answer, []
        calls = [_wire(p.call.name, p.call.arguments) for p in self._calls(answer) if p.call.error is None]
        text = self.fmt.strip_calls(answer) if calls else answer
        return (text or None), calls

    def _calls(self, answer: str) -> list[CallPiece]:
        stream = CallStream(self.fmt)
        pieces = [*stream.feed(answer), *stream.finish()]
        calls = [p for p in pieces if isinstance(p, CallPiece)]
        return calls if self.parallel else calls[:1]

    def deltas(self) -> ToolCallDeltas:
        """A streaming splitter of the answer into content and tool-call deltas."""
        return ToolCallDeltas(self)


def _wire(name: str, arguments: dict[str, Any]) -> MessageToolCall:
    return MessageToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                           function=FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)))


class ToolCallDeltas:
    """Turns the aggregator's text deltas into OpenAI chunk deltas: `content` text and whole `tool_calls`."""

    def __init__(self, request: ToolRequest) -> None:
        self._request = request
        self._stream = CallStream(request.fmt)
        self.calls = 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas now certain after `text`."""
        return self._deltas(self._stream.feed(text))

    def finish(self) -> list[dict[str, Any]]:
        """Deltas left when the answer ends."""
        return self._deltas(self._stream.finish())

    def _deltas(self, pieces: list[TextPiece | CallPiece]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for piece in pieces:
            if isinstance(piece, TextPiece):
                out.append({"content": piece.text})
            elif piece.call.error is None and (self._request.parallel or self.calls == 0):
                call = _wire(piece.call.name, piece.call.arguments)
                out.append({"tool_calls": [{"index": self.calls, **call.model_dump()}]})
                self.calls += 1
        return out


# ---------------------------------------------------------------------------------------------- the conversation


def assistant_text(content: str, tool_calls: Sequence[MessageToolCall], fmt: CallFormat, index: int) -> str:
    """An assistant message with calls as the model wrote it: its text, then each call in the call format."""
    rendered = []
    for j, call in enumerate(tool_calls):
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as e:
            raise APIError(400, f"messages[{index}].tool_calls[{j}].function.arguments is not valid JSON: {e.msg}",
                           param=f"messages[{index}].tool_calls[{j}].function.arguments") from None
        if not isinstance(arguments, dict):
            raise APIError(400, f"messages[{index}].tool_calls[{j}].function.arguments must be a JSON object",
                           param=f"messages[{index}].tool_calls[{j}].function.arguments")
        rendered.append(fmt.render_call(ToolCall(call.id, call.function.name, arguments)))
    return "\n".join(part for part in (content, *rendered) if part)


def tool_results_text(results: Sequence[tuple[str, str, str]], fmt: CallFormat) -> str:
    """Consecutive `tool` messages (call id, function name, content) as the one turn the call format appends."""
    return fmt.render_results([ToolResult(call_id, name, result=content) for call_id, name, content in results])
