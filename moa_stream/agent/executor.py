"""Running one step's calls: in order (pure ones side by side), through the tool cache for pure tools, never raising.

The agent loop hands every call of a step here; what runs a call (and, later, whether a speculative start
already has its result) is this class's business, so the loop stays the same when that changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..tools.calls import ToolCall, ToolResult
from ..tools.errors import ToolError
from ..tools.toolset import ToolSet
from .tool_cache import ToolCache
from .tool_speculation import SpeculativeCalls


class ToolExecutor:
    """Runs calls on a ToolSet with a per-call timeout; pure tools' results are cached when a cache is given."""

    def __init__(self, tools: ToolSet, *, timeout: float | None = None, cache: ToolCache | None = None) -> None:
        self.tools = tools
        self.timeout = timeout
        self.cache = cache
        self.speculative: SpeculativeCalls | None = None  # the step's early starts, when speculation is on

    def speculate(self) -> SpeculativeCalls:
        """Open a step's speculation: pure calls may be started before the model has finished writing them."""
        self.speculative = SpeculativeCalls(self._run_for_speculation, self._pure_name)
        return self.speculative

    async def _run_for_speculation(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        result = await self.tools.run(ToolCall("speculative", name, dict(arguments)), self.timeout)
        if not result.ok:  # a failed guess is not taken: the real call runs and reports its own error
            raise ToolError(result.error or "failed")
        return result

    def _pure_name(self, name: str) -> bool:
        tool = self.tools.get(name)
        return tool is not None and tool.pure

    async def run_one(self, call: ToolCall) -> ToolResult:
        """One call's result (an error result when it fails): from the cache, a speculative start, or a run."""
        if self.speculative is not None:
            taken, early = await self.speculative.take(call.name, call.arguments)
            if taken:
                return replace(early, id=call.id, speculated=True)
        tool = self.tools.get(call.name)
        cacheable = self.cache is not None and tool is not None and tool.pure
        if cacheable:
            assert self.cache is not None
            t0 = time.perf_counter()
            hit, value = self.cache.get(call.name, call.arguments)
            if hit:
                return ToolResult(call.id, call.name, value, cached=True, elapsed_s=time.perf_counter() - t0)
        result = await self.tools.run(call, self.timeout)
        if cacheable and result.ok:
            assert self.cache is not None
            self.cache.put(call.name, call.arguments, result.result)
        return result

    def _pure(self, call: ToolCall) -> bool:
        return self._pure_name(call.name)

    async def run(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Every call's result, in the calls' order.

        Calls that change state run one after another in the order written (`cd` then `ls` must see the new
        directory); a run of consecutive pure calls runs concurrently.
        """
        results: list[ToolResult] = []
        i = 0
        while i < len(calls):
            j = i + 1
            if self._pure(calls[i]):
                while j < len(calls) and self._pure(calls[j]):
                    j += 1
            results += await asyncio.gather(*(self.run_one(c) for c in calls[i:j]))
            i = j
        return [replace(r, id=c.id) for r, c in zip(results, calls, strict=True)]
