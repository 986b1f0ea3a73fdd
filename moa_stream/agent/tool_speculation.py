"""Speculative tool calls: start a pure call before the model has finished asking for it.

Two starts feed one mechanism: the streaming start (the streamed text already parses as a complete call) and
the predicted start (a `Speculator` guesses the step's call while the step decodes: `HistoryPredictor` from calls
seen before, `DraftSpeculator` (moa_stream/agent/draft_speculator.py) from a short greedy draft). The real call takes a
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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from engine import Engine, StructuredOutput
from engine import Sequence as EngineSequence

from .tool_cache import canonical_call

if TYPE_CHECKING:
    from ..tools import CallFormat

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
    finished_at: float | None = None  # when the tool returned (it may be long before the real call asks)


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
        started = self._started[key] = _Started(task, self.clock(), source)
        task.add_done_callback(lambda _: setattr(started, "finished_at", self.clock()))
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
        finished_at = self.clock() if started.finished_at is None else started.finished_at
        # What ran before the real call asked is tool time the step no longer waits for (not the idle wait after
        # the tool returned).
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


@dataclass
class StepContext:
    """What a speculator may read when a step begins. The agent's sequence is there to fork, never to write.

    The step's generation waits until the speculator calls `release()` (or returns), so a fork taken before
    that holds exactly `tokens`: the context the step decodes from.
    """

    calls: tuple[PredictedCall, ...]  # the turn's calls so far
    engine: Engine  # the agent's engine
    seq: EngineSequence  # the agent's sequence, idle until released
    tokens: tuple[int, ...]  # its token ids now: the rendered context
    format: CallFormat  # how calls are written and parsed
    structured: StructuredOutput | None  # the step's call grammar (None: unconstrained)
    cache_salt: str | None = None  # the tenant's prefix-cache salt, for a sequence opened on another engine
    _released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def text(self) -> str:
        """The rendered context as text (special tokens kept), for an engine with another tokenizer."""
        return self.engine.tokenizer.decode(list(self.tokens), skip_special_tokens=False)

    def release(self) -> None:
        """Let the step start: the speculator has forked the sequence or needs it no more."""
        self._released.set()

    async def wait_released(self) -> None:
        """Return once the speculator released the agent's sequence."""
        await self._released.wait()


@runtime_checkable
class Speculator(Protocol):
    """Guesses the call a step will make; `guess` runs beside the step's decoding and is cancelled at its end."""

    name: str

    async def guess(self, context: StepContext) -> PredictedCall | None:
        """The predicted call, or None; it must never write to `context.seq` and must free what it opened."""
        ...

    def observe(self, calls: Sequence[PredictedCall]) -> None:
        """Learn from one finished run's calls, in order (a speculator that does not learn ignores them)."""
        ...


class PredictedStart:
    """One step's predicted start: the speculator runs as a task; its guess is started the moment it comes."""

    def __init__(self, speculator: Speculator, context: StepContext, early: SpeculativeCalls) -> None:
        self.speculator = speculator
        self.context = context
        self.early = early
        self._task: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        """Start guessing; return once the agent's sequence is released (the step may decode then)."""
        self._task = asyncio.ensure_future(self._run())
        try:
            await self.context.wait_released()
        except BaseException:
            await self.stop()
            raise

    async def _run(self) -> None:
        try:
            guess = await self.speculator.guess(self.context)
        finally:
            self.context.release()  # a speculator that never released (or failed) must not hold the step
        if guess is not None:
            self.early.start(guess.name, guess.arguments, self.speculator.name)

    async def stop(self) -> None:
        """Cancel a guess still being made: once the step has written its calls a late guess is worthless."""
        if self._task is None:
            return
        self._task.cancel()
        # A speculator's failure is a missed guess, never the step's failure: the real calls run as written.
        await asyncio.gather(self._task, return_exceptions=True)


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

    async def guess(self, context: StepContext) -> PredictedCall | None:
        """The Speculator side: `predict` from the step's calls so far (the sequence is not read)."""
        context.release()
        return self.predict(context.calls)

