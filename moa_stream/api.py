"""The public async API: `MoA.from_config(...)`, `moa.stream(question)`, `moa.run(question)`, conversations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import Engine, EngineStats, StructuredOutput
from engine import Sequence as EngineSequence

from .agent.context import ChatFormat, Message, as_messages
from .agent.slot import AgentSlot
from .backends import build_engines
from .config import AgentConfig, MoAConfig, StaircaseConfig
from .errors import ConfigError
from .events import DEBATE_MODES, AgentError, Done, Event, RunResult
from .moa.debate import Pipeline, pipeline
from .moa.layouts import layout_class
from .moa.turn import Turn
from .moa.turn_input import TurnInput

_END = object()


class MoA:
    """A Mixture-of-Agents pipeline over shared stateful engines."""

    def __init__(self, config: MoAConfig, engines: dict[str, Engine]) -> None:
        missing = sorted({a.backend for a in config.agents()} - set(engines))
        if missing:
            raise ConfigError(f"no engine for backend(s) {missing}; pass engines= or define them in backends")
        self.config = config
        self.engines = engines
        self._formats: dict[int, ChatFormat] = {}

    @classmethod
    def from_config(cls, source: str | Path | dict[str, Any] | MoAConfig | None = None, *,
                    engines: dict[str, Engine] | None = None, model: str | None = None) -> MoA:
        """Build the pipeline; engines are created from the config's backends unless given."""
        config = MoAConfig.load(source)
        if engines is None:
            engines = build_engines(config.backends, model_override=model)
        return cls(config, engines)

    def _fmt(self, engine: Engine) -> ChatFormat:
        key = id(engine)
        if key not in self._formats:
            self._formats[key] = ChatFormat(engine.tokenizer)
        return self._formats[key]

    def _slots(self, pipe: Pipeline | None = None) -> tuple[list[list[AgentSlot]], AgentSlot]:
        pipe = pipe or pipeline(self.config, self.config.mode)

        def slot(cfg: AgentConfig, layer: int) -> AgentSlot:
            eng = self.engines[cfg.backend]
            draft = cfg.speculation.draft_backend
            return AgentSlot(cfg=cfg, engine=eng, fmt=self._fmt(eng), layer=layer,
                             draft_engine=self.engines[draft] if draft else None)

        layers = [[slot(a, i) for a in layer] for i, layer in enumerate(pipe.layers)]
        return layers, slot(pipe.aggregator, len(layers))

    def conversation(self, mode: str | None = None, cache_salt: str | None = None) -> Conversation:
        """A multi-turn chat whose agents keep their sequences alive between turns (salted per tenant)."""
        return Conversation(self, mode, cache_salt=cache_salt)

    async def stream(self, question: str, history: Sequence[Message | dict[str, str]] | None = None, *,
                     mode: str | None = None, staircase: StaircaseConfig | None = None,
                     max_tokens: int | None = None, cache_salt: str | None = None,
                     structured: StructuredOutput | None = None) -> AsyncIterator[Event]:
        """Answer one question, yielding typed events; leaving the loop cancels every agent.

        cache_salt keeps this request's prefix-cache blocks apart from other tenants' (same salt: shared);
        structured constrains the answer (a JSON schema, a grammar, the tool-call format's structural tag).
        """
        conv = Conversation(self, mode, history=as_messages(history), cache_salt=cache_salt)
        try:
            async for ev in conv.stream(question, mode=mode, staircase=staircase, max_tokens=max_tokens,
                                        structured=structured):
                yield ev
        finally:
            await conv.close()

    async def run(self, question: str, history: Sequence[Message | dict[str, str]] | None = None, *,
                  mode: str | None = None, staircase: StaircaseConfig | None = None,
                  max_tokens: int | None = None, cache_salt: str | None = None) -> RunResult:
        """Answer one question; returns the answer, its metrics and any agent errors."""
        return await collect(self.stream(question, history, mode=mode, staircase=staircase,
                                          max_tokens=max_tokens, cache_salt=cache_salt))

    def prompt_tokens(self, question: str,
                      history: Sequence[Message | dict[str, str]] | None = None) -> dict[str, int]:
        """Tokens each agent reads before any proposal (system prompt, history, question), by agent name."""
        msgs = as_messages(history)
        out: dict[str, int] = {}
        for cfg in self.config.agents():
            chat = [*([Message("system", cfg.system_prompt)] if cfg.system_prompt else []), *msgs,
                    Message("user", question)]
            out[cfg.name] = len(self._fmt(self.engines[cfg.backend]).prompt(chat))
        return out

    def engine_stats(self) -> dict[str, EngineStats]:
        """Each backend's engine counters."""
        return {name: eng.stats() for name, eng in self.engines.items()}

    async def aclose(self) -> None:
        """Shut every engine down."""
        for eng in {id(e): e for e in self.engines.values()}.values():
            await eng.shutdown()


@dataclass(frozen=True)
class AnswerStart:
    """The aggregator's live context at the moment it would sample its first answer token."""

    engine: Engine
    seq: EngineSequence  # the aggregator's sequence: score or fork it, never close it (the conversation does)
    context_tokens: int
    start_s: float  # seconds from the question to the answer start (the TTFT analogue)
    t0: float  # perf_counter() when the turn began
    chunks_ingested: int  # proposal chunks the context held at the answer start
    slots: tuple[AgentSlot, ...]

    def prefill(self) -> tuple[int, int]:
        """Prefill tokens (computed, reused) by every agent in this turn so far."""
        stats = [s.turn_stats() for s in self.slots]
        return sum(s.prefill_computed for s in stats), sum(s.prefill_reused for s in stats)


class Conversation:
    """Turns of one chat; turn n+1 appends only its new tokens to each agent's live sequence."""

    def __init__(self, moa: MoA, mode: str | None = None, history: list[Message] | None = None,
                 cache_salt: str | None = None) -> None:
        self.moa = moa
        self.cache_salt = cache_salt
        self.mode: str = _check_mode(mode or moa.config.mode)
        self.history: list[Message] = list(history or [])
        self._shapes: dict[str, tuple[list[list[AgentSlot]], AgentSlot]] = {}  # the agents of each pipeline shape
        self._shape: str | None = None  # the shape whose agents hold sequences for `history`
        self._lock = asyncio.Lock()
        self._live = False  # agents hold sequences for `history`

    async def _agents(self, pipe: Pipeline) -> tuple[list[list[AgentSlot]], AgentSlot]:
        """The slots of the pipeline's shape; switching shapes frees the other shape's sequences (they miss turns)."""
        if pipe.shape not in self._shapes:
            self._shapes[pipe.shape] = self.moa._slots(pipe)
        if self._shape is not None and self._shape != pipe.shape:
            await self._reset_agents()
        self._shape = pipe.shape
        return self._shapes[pipe.shape]

    def _input(self, user_text: str, mode: str, pipe: Pipeline, staircase: StaircaseConfig | None,
               max_tokens: int | None, reuse: bool, structured: StructuredOutput | None = None) -> TurnInput:
        return TurnInput(user_text, list(self.history), pipe.mode, staircase or self.moa.config.staircase,
                         max_tokens, reuse=reuse, cache_salt=self.cache_salt, structured=structured,
                         layer_modes=tuple(_check_layout(m) for m in pipe.layer_modes), label=mode)

    def _slots_in_use(self) -> list[AgentSlot]:
        return [s for layers, agg in self._shapes.values() for s in [*(s for layer in layers for s in layer), agg]]

    async def stream(self, user_text: str, *, mode: str | None = None, staircase: StaircaseConfig | None = None,
                     max_tokens: int | None = None, structured: StructuredOutput | None = None) -> AsyncIterator[Event]:
        """One turn: yields the turn's events and records the answer in the history."""
        if not isinstance(user_text, str) or not user_text.strip():
            raise ValueError("the question is empty: pass some text")
        turn_mode = _check_mode(mode or self.mode)
        pipe = pipeline(self.moa.config, turn_mode)
        async with self._lock:
            layers, agg = await self._agents(pipe)
            inp = self._input(user_text, turn_mode, pipe, staircase, max_tokens, self._live, structured)
            queue: asyncio.Queue[Any] = asyncio.Queue()
            turn = Turn(layers, agg, inp, queue.put_nowait)
            task = asyncio.create_task(_drive(turn, queue), name="moa-turn")
            finished = False
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, Done):
                        finished = True
                        self.history += [Message("user", user_text), Message("assistant", item.answer)]
                        self._live = True
                    yield item
            finally:
                # Shielded: a second cancellation (servers send them) must not stop the agents' cleanup halfway.
                await asyncio.shield(asyncio.ensure_future(self._end_turn(task, finished)))

    async def _end_turn(self, task: asyncio.Task[None], finished: bool) -> None:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not finished:  # a cancelled or failed turn leaves partial contexts: start afresh next turn
            await self._reset_agents()

    @contextlib.asynccontextmanager
    async def answer_start(self, user_text: str, *,
                           staircase: StaircaseConfig | None = None) -> AsyncIterator[AnswerStart]:
        """Run a turn up to the aggregator's first answer token and lend its context; the agents are freed after."""
        if not isinstance(user_text, str) or not user_text.strip():
            raise ValueError("the question is empty: pass some text")
        pipe = pipeline(self.moa.config, self.mode)
        async with self._lock:
            layers, agg = await self._agents(pipe)
            inp = self._input(user_text, self.mode, pipe, staircase, None, reuse=False)
            turn = Turn(layers, agg, inp, lambda _event: None)
            try:
                start_s = await turn.run_to_answer_start()
                assert agg.seq is not None
                yield AnswerStart(agg.engine, agg.seq, agg.context_tokens(), start_s, turn.t0, turn.chunks_ingested,
                                  tuple([*(s for layer in layers for s in layer), agg]))
            finally:
                await self._reset_agents()

    async def send(self, user_text: str, **kwargs: Any) -> RunResult:
        """One turn, collected."""
        return await collect(self.stream(user_text, **kwargs))

    async def _reset_agents(self) -> None:
        for slot in self._slots_in_use():
            await slot.reset()
        self._live = False

    async def reset(self) -> None:
        """Forget the history and free every agent's sequence."""
        async with self._lock:
            await self._reset_agents()
            self.history = []

    async def pin(self, ttl: float | None) -> None:
        """Keep every agent's sequence resident for `ttl` seconds (None: until closed), as a server session does."""
        for slot in self._slots_in_use():
            if slot.seq is not None:
                await slot.engine.pin(slot.seq, ttl)

    async def close(self) -> None:
        """Free every agent's sequence (the conversation can still be used; it restarts from its history)."""
        await self._reset_agents()


async def _drive(turn: Turn, queue: asyncio.Queue[Any]) -> None:
    try:
        await turn.run()
    except Exception as exc:
        queue.put_nowait(exc)
    finally:
        queue.put_nowait(_END)


async def collect(events: AsyncIterator[Event]) -> RunResult:
    """Run a turn's events to the end; the answer, metrics and agent errors."""
    errors: list[AgentError] = []
    done: Done | None = None
    async for ev in events:  # to the end, so the turn's cleanup runs before we return
        if isinstance(ev, AgentError):
            errors.append(ev)
        elif isinstance(ev, Done):
            done = ev
    if done is None:  # pragma: no cover - a turn either raises or ends with Done
        raise RuntimeError("the turn ended without a Done event")
    return RunResult(done.answer, done.metrics, tuple(errors))


def _check_layout(mode: str) -> str:
    """`mode` if it names a registered layout (how a later layer reads); else a ConfigError naming them."""
    layout_class(mode)
    return mode


def _check_mode(mode: str) -> str:
    """`mode` if it is a debate mode or a registered layout; else a ConfigError naming them all."""
    if mode in DEBATE_MODES:
        return mode
    try:
        layout_class(mode)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or a debate mode: {', '.join(DEBATE_MODES)})") from None
    return mode
