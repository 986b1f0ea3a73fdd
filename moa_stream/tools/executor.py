"""Running one step's calls: in order (pure ones side by side), through the tool cache for pure tools, never raising.

The agent loop hands every call of a step here; what runs a call (and, later, whether a speculative start
already has its result) is this class's business, so the loop stays the same when that changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

from ..tool_cache import ToolCache
from .calls import ToolCall, ToolResult
from .toolset import ToolSet


class ToolExecutor:
    """Runs calls on a ToolSet with a per-call timeout; pure tools' results are cached when a cache is given."""

    def __init__(self, tools: ToolSet, *, timeout: float | None = None, cache: ToolCache | None = None) -> None:
        self.tools = tools
        self.timeout = timeout
        self.cache = cache

    async def run_one(self, call: ToolCall) -> ToolResult:
        """One call's result (an error result when it fails)."""
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
        tool = self.tools.get(call.name)
        return tool is not None and tool.pure

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
