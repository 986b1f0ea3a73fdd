"""Speculative tool calls: start a pure call before the model has finished asking for it.

Two starts feed one mechanism: the streaming start (the streamed text already parses as a complete call) and
the predicted start (a speculator guesses the step's call when the step begins). The real call takes a
speculative result only on an exact canonical match; every other speculation is cancelled and its result
never reaches a context. Impure tools are never started early. The timing model (arXiv 2512.15834) is
T_spec = alpha*N*max(G, g+T) + (1-alpha)*N*(G+T), alpha being how often the speculation was right.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .tool_cache import canonical_call

RunTool = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


@dataclass
class SpeculationStats:
    """Speculations started, taken by a real call, cancelled as wrong, and tool time they hid."""

    started: int = 0
    taken: int = 0
    cancelled: int = 0
    refused_impure: int = 0
    hidden_seconds: float = 0.0

    @property
    def alpha(self) -> float:
        """How often a started speculation was the call the model made (0 when none was started)."""
        return self.taken / self.started if self.started else 0.0


@dataclass
class _Started:
    task: asyncio.Task[Any]
    started_at: float
    source: str  # "stream" or the speculator's name


@dataclass
class SpeculativeCalls:
    """The speculations of one agent step: start pure calls early, let the real call take an exact match."""

    run: RunTool
    is_pure: Callable[[str], bool]
    clock: Callable[[], float] = time.monotonic
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    _started: dict[str, _Started] = field(default_factory=dict)

    def start(self, name: str, arguments: Mapping[str, Any], source: str) -> bool:
        """Start this call now if its tool is pure and it is not already running; True if it was started."""
        if not self.is_pure(name):
            self.stats.refused_impure += 1
            return False
        key = canonical_call(name, arguments)
        if key in self._started:
            return False
        task = asyncio.ensure_future(self.run(name, dict(arguments)))
        self._started[key] = _Started(task, self.clock(), source)
        self.stats.started += 1
        return True

    async def take(self, name: str, arguments: Mapping[str, Any]) -> tuple[bool, Any]:
        """(True, result) if this exact call was started early (awaiting what is left of it), else (False, None).

        A speculation that raised is reported as not taken, so the real call runs and reports its own error.
        """
        started = self._started.pop(canonical_call(name, arguments), None)
        if started is None:
            return False, None
        asked_at = self.clock()
        try:
            result = await started.task
        except Exception:
            self.stats.cancelled += 1
            return False, None
        finished_at = self.clock()
        # What ran before the real call asked is tool time the step no longer waits for.
        self.stats.hidden_seconds += max(0.0, min(finished_at, asked_at) - started.started_at)
        self.stats.taken += 1
        return True, result

    async def cancel_rest(self) -> int:
        """Cancel every speculation no real call took (wrong guesses); their results are dropped unseen."""
        rest = list(self._started.values())
        self._started.clear()
        for started in rest:
            started.task.cancel()
        await asyncio.gather(*(s.task for s in rest), return_exceptions=True)
        self.stats.cancelled += len(rest)
        return len(rest)


@dataclass(frozen=True)
class PredictedCall:
    """A guess at the next call: the name and arguments to start."""

    name: str
    arguments: dict[str, Any]


class HistoryPredictor:
    """Predicts the next call from calls seen before: what followed the same previous call, else the same step.

    It learns from finished runs (`observe`), so repeated workflows, such as the traces of a benchmark or a
    client's recurring task, are predicted; a first run predicts nothing.
    """

    name = "history"

    def __init__(self) -> None:
        self._after: dict[str, Counter[str]] = defaultdict(Counter)
        self._at_step: dict[int, Counter[str]] = defaultdict(Counter)
        self._calls: dict[str, PredictedCall] = {}

    def observe(self, calls: Sequence[PredictedCall]) -> None:
        """Learn from one finished run's calls, in order."""
        previous = ""
        for step, call in enumerate(calls):
            key = canonical_call(call.name, call.arguments)
            self._calls[key] = call
            self._after[previous][key] += 1
            self._at_step[step][key] += 1
            previous = key

    def predict(self, calls_so_far: Sequence[PredictedCall]) -> PredictedCall | None:
        """The most frequent follower of the last call, else the most frequent call at this step, else None."""
        previous = canonical_call(calls_so_far[-1].name, calls_so_far[-1].arguments) if calls_so_far else ""
        for counts in (self._after.get(previous), self._at_step.get(len(calls_so_far))):
            if counts:
                return self._calls[counts.most_common(1)[0][0]]
        return None

