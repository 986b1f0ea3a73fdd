"""A set of tools by name, and running one call: any failure (raise, timeout, unknown name) is an error result."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .calls import ToolCall, ToolResult
from .errors import ToolArgumentsError, ToolSchemaError
from .tool import Tool


def result_text(value: Any) -> str:
    """A tool's return value as the text the model reads: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


class ToolSet:
    """Tools by name; `run(call)` executes one call with a timeout and always returns a ToolResult."""

    def __init__(self, tools: Iterable[Tool] = (), *, timeout: float | None = 30.0) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if not isinstance(tool, Tool):
                raise ToolSchemaError(f"a ToolSet holds Tool objects, got {type(tool).__name__}")
            if tool.name in self._tools:
                raise ToolSchemaError(f"two tools are named {tool.name!r}; tool names must be unique")
            self._tools[tool.name] = tool
        self.timeout = timeout

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __or__(self, other: ToolSet) -> ToolSet:
        """Both sets' tools (names must not clash); the shorter timeout."""
        timeouts = [t for t in (self.timeout, other.timeout) if t is not None]
        return ToolSet([*self, *other], timeout=min(timeouts) if timeouts else None)

    @property
    def names(self) -> list[str]:
        """Tool names in the order they were given."""
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        """The tool of that name, or None."""
        return self._tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        """Every tool as OpenAI's tool JSON."""
        return [t.spec() for t in self]

    async def run(self, call: ToolCall, timeout: float | None = None) -> ToolResult:
        """Run one call; whatever goes wrong comes back as a ToolResult with `error` set."""
        t0 = time.perf_counter()
        limit = self.timeout if timeout is None else timeout

        def failed(error: str) -> ToolResult:
            return ToolResult(call.id, call.name, error=error, elapsed_s=time.perf_counter() - t0)

        tool = self._tools.get(call.name)
        if tool is None:
            return failed(f"unknown tool {call.name!r}; the tools are: {', '.join(self.names) or '(none)'}")
        if tool.fn is None:
            return failed(f"tool {call.name!r} has no function bound here; its calls go back to the caller")
        try:
            kwargs = tool.check_arguments(call.arguments)
        except ToolArgumentsError as e:
            return failed(f"bad arguments: {e}")
        try:
            async with asyncio.timeout(limit):  # the runner stops what it can of a call cut here
                value = await tool.call_runner.run(tool.fn, kwargs)
        except TimeoutError:
            return failed(f"timed out after {limit:g} s")
        except Exception as e:  # a tool's own failure is the model's to read, not the run's to die of
            return failed(f"{type(e).__name__}: {e}")
        return ToolResult(call.id, call.name, result_text(value), elapsed_s=time.perf_counter() - t0)
