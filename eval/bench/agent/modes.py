"""How each mode serves an agent step: one class per mode, each reporting what the engine computed."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine import CapacityError, Engine, SamplingParams, Sequence

from .workload import Segment, literal_grammar

if TYPE_CHECKING:
    pass


LOCAL_MODES = ("stateful", "prefix-cache", "reprefill")
CAPACITY_RETRY_S = 0.02  # an append refused while every other sequence is busy or pinned waits this, then retries


# ---------------------------------------------------------------------------------------------- measurements


@dataclass
class StepRecord:
    """One step of one agent: its model time (Δ in, call out), its tool time and the tokens it cost."""

    agent: int
    index: int
    model_s: float
    tool_s: float
    delta_tokens: int
    call_tokens: int
    context_tokens: int
    computed: int = 0  # prefill tokens computed for this step (recomputation after eviction included)
    reused: int = 0
    recomputed: int = 0
    call_matched: bool = True  # the model wrote exactly the trace's call
    capacity_retries: int = 0
    decode_s: float = 0.0  # from the step's first token to its last
    decode_tokens: int = 0  # tokens written after the first (what decode_s produced)


@dataclass
class Generated:
    """What a step's generation wrote, and the tokens its step cost."""

    text: str
    ids: list[int]  # empty when only a server saw the tokens (then `completion_tokens` counts them)
    completion_tokens: int | None = None
    computed: int = 0
    reused: int = 0
    recomputed: int = 0
    capacity_retries: int = 0
    decode_s: float = 0.0
    decode_tokens: int = 0


@dataclass
class Written:
    """One whole generation: its text, token ids, and the time its tokens after the first took."""

    text: str
    ids: list[int]
    decode_s: float = 0.0
    decode_tokens: int = 0


class AgentMode(Protocol):
    """How one agent's steps reach a model: one class per serving style."""

    async def step(self, delta: Segment, params: SamplingParams, call: str) -> Generated:
        """Append Δ and generate the call; returns what was written and what the step cost."""
        ...

    async def tool_started(self, expected_s: float) -> None:
        """The agent's tool starts running (expected to take `expected_s`)."""
        ...

    async def tool_done(self) -> None:
        """The agent's tool returned."""
        ...

    async def close(self) -> None:
        """Release whatever the agent holds."""
        ...


async def generate_all(engine: Engine, seq: Sequence, params: SamplingParams) -> Written:
    """One whole generation; the decode clock starts at the first delta (the prefill's token) and ends at the last."""
    out = Written("", [])
    first_at, first_tokens = 0.0, 0
    async for delta in engine.generate(seq, params):
        if not out.ids and delta.token_ids:
            first_at, first_tokens = time.perf_counter(), len(delta.token_ids)
        out.text += delta.text
        out.ids.extend(delta.token_ids)
    if out.ids:
        out.decode_s = time.perf_counter() - first_at
        out.decode_tokens = len(out.ids) - first_tokens
    return out


def _written(out: Generated, gen: Written) -> None:
    out.text, out.ids, out.decode_s, out.decode_tokens = gen.text, gen.ids, gen.decode_s, gen.decode_tokens


async def _retrying(op: Any, deadline_s: float) -> int:
    """Run `op()` again while the engine refuses it for lack of KV; the retries are counted in the figures.

    The engine itself waits for pins to end (up to its pin_wait_s), so this is only the last resort of an agent
    refused after that.
    """
    retries = 0
    end = time.monotonic() + deadline_s
    while True:
        try:
            await op()
            return retries
        except CapacityError:
            if time.monotonic() > end:
                raise
            retries += 1
            await asyncio.sleep(CAPACITY_RETRY_S)


class StatefulAgent:
    """One resident sequence per agent: a step appends Δ and decodes; the sequence is pinned while its tool runs."""

    def __init__(self, engine: Engine, system: Segment, pin_ttl_s: float | None) -> None:
        self._engine = engine
        self._system = system
        self._pin_ttl_s = pin_ttl_s
        self._seq: Sequence | None = None

    async def step(self, delta: Segment, params: SamplingParams, call: str) -> Generated:
        """Append Δ (open with the system turn at the first step) and generate on the same sequence."""
        eng = self._engine
        before = eng.seq_stats(self._seq) if self._seq is not None else None
        out = Generated("", [])

        async def feed() -> None:
            if self._seq is None:
                self._seq = await eng.open([*self._system.ids, *delta.ids])
            else:
                await eng.append(self._seq, delta.ids)

        async def write() -> None:
            assert self._seq is not None
            _written(out, await generate_all(eng, self._seq, params))

        out.capacity_retries = await _retrying(feed, 60.0) + await _retrying(write, 60.0)
        assert self._seq is not None
        after = eng.seq_stats(self._seq)
        out.computed = after.prefill_computed - (before.prefill_computed if before else 0)
        out.reused = after.prefill_reused - (before.prefill_reused if before else 0)
        out.recomputed = after.recomputed_after_eviction - (before.recomputed_after_eviction if before else 0)
        return out

    async def tool_started(self, expected_s: float) -> None:
        """Pin the sequence for the tool's run (bounded by the TTL, then evictable and recomputed if needed)."""
        if self._seq is not None:
            await self._engine.pin(self._seq, self._pin_ttl_s)

    async def tool_done(self) -> None:
        """Unpin: the sequence is evictable again until its next append."""
        if self._seq is not None:
            await self._engine.unpin(self._seq)

    async def close(self) -> None:
        """Close the agent's sequence."""
        if self._seq is not None:
            await self._engine.close(self._seq)
            self._seq = None


class ReopeningAgent:
    """A new sequence per step on the whole conversation, closed after it (what a re-sending client gets).

    With `share=True` it finds the previous steps' blocks in the prefix cache (vLLM/SGLang prefix caching);
    with `share=False` every step gets a fresh cache salt, so nothing is shared and all is recomputed.
    """

    def __init__(self, engine: Engine, system: Segment, share: bool) -> None:
        self._engine = engine
        self._tokens: list[int] = list(system.ids)
        self._share = share

    async def step(self, delta: Segment, params: SamplingParams, call: str) -> Generated:
        """Open a sequence on the conversation plus Δ, generate, count what it cost, close it."""
        eng = self._engine
        prompt = [*self._tokens, *delta.ids]
        salt = None if self._share else uuid.uuid4().hex
        out = Generated("", [])
        seq: Sequence | None = None

        async def feed() -> None:
            nonlocal seq
            seq = await eng.open(prompt, cache_salt=salt)

        async def write() -> None:
            assert seq is not None
            _written(out, await generate_all(eng, seq, params))

        out.capacity_retries = await _retrying(feed, 60.0)
        assert seq is not None
        try:
            out.capacity_retries += await _retrying(write, 60.0)
            st = eng.seq_stats(seq)
            out.computed, out.reused, out.recomputed = st.prefill_computed, st.prefill_reused, \
                st.recomputed_after_eviction
        finally:
            await eng.close(seq)
        self._tokens = [*prompt, *out.ids]
        return out

    async def tool_started(self, expected_s: float) -> None:
        """Nothing is held while the tool runs."""

    async def tool_done(self) -> None:
        """Nothing to release."""

    async def close(self) -> None:
        """Nothing is held between steps."""


class LlamaServerAgent:
    """The same agent against llama.cpp's server: the whole conversation re-sent as text every step."""

    def __init__(self, client: Any, system: Segment) -> None:
        self._client = client
        self._text = system.text

    async def step(self, delta: Segment, params: SamplingParams, call: str) -> Generated:
        """POST /v1/completions with the conversation, the call forced by the server's `grammar` field."""
        prompt = self._text + delta.text
        body = {
            "prompt": prompt, "max_tokens": params.max_tokens, "temperature": 0.0,
            "grammar": literal_grammar(call).ebnf,
            "cache_prompt": True,  # llama.cpp's own server field; llama-cpp-python reuses its prompt cache anyway
        }
        resp = await self._client.post("/completions", json=body)
        resp.raise_for_status()
        data = resp.json()
        text = data["choices"][0]["text"]
        self._text = prompt + text
        usage = data.get("usage", {})
        return Generated(text, [], completion_tokens=int(usage.get("completion_tokens", 0)))

    async def tool_started(self, expected_s: float) -> None:
        """The server holds nothing for us while the tool runs."""

    async def tool_done(self) -> None:
        """Nothing to release."""

    async def close(self) -> None:
        """Nothing is held between steps."""


def make_mode(name: str, engine: Engine, system: Segment, pin_ttl_s: float | None) -> AgentMode:
    """The agent class of a local mode."""
    if name == "stateful":
        return StatefulAgent(engine, system, pin_ttl_s)
    if name == "prefix-cache":
        return ReopeningAgent(engine, system, share=True)
    if name == "reprefill":
        return ReopeningAgent(engine, system, share=False)
    raise ValueError(f"unknown mode {name!r}; pick from {', '.join(LOCAL_MODES)}")
