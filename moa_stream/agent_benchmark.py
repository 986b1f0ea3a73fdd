"""The agent bench: stateful agent steps against the stateless ways other stacks serve them.

Every agent replays a BFCL v4 multi-turn trace (ground-truth calls run on BFCL's own classes), so every mode
reads and writes the same tokens whatever the model would have chosen. A step appends Δ (the previous tool
result and any next user turn), generates the call forced to the trace's text by a grammar, then runs the tool
(the real function plus a simulated latency). Modes, one class each:

- `stateful`: one resident sequence per agent, appended in O(Δ), pinned while its tool runs;
- `prefix-cache`: a new sequence per step opened on the whole conversation, sharing cached blocks (how vLLM and
  SGLang serve a client that re-sends the conversation), closed after the step;
- `reprefill`: a new sequence per step with a fresh cache salt, so nothing is shared (no cache);
- `llamacpp`: llama.cpp's server (llama-cpp-python) re-sent the conversation every step, its prompt cache on.

Several agents run interleaved on one engine whose KV budget is smaller than their summed contexts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import time
import uuid
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from engine import Engine, SamplingParams, Sequence
from engine.errors import CapacityError
from engine.structured_output import Grammar

if TYPE_CHECKING:
    from engine.llama_server import PeerServer

from .bfcl_traces import BfclCase, TraceCall, TraceStep, chained_steps, execute, fresh_instances, load_cases

# Targets printed beside the figures (arXiv 2605.26289's per-turn gains, and ours against the peers), not asserted.
TARGETS: dict[str, float] = {
    "ratio_reprefill_6": 2.1,
    "ratio_reprefill_35": 4.2,
    "ratio_prefix_cache_8": 1.3,
    "ratio_llamacpp_8": 1.0,
}
LOCAL_MODES = ("stateful", "prefix-cache", "reprefill")
CALL_SLACK_TOKENS = 8  # room past the call's own length: a forced call may tokenize a little differently
WARMUP_TOKENS = 300
CAPACITY_RETRY_S = 0.02  # an append refused while every other sequence is busy or pinned waits this, then retries


# ---------------------------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workflow:
    """One agent's work: the tools it is shown and the trace steps it replays."""

    cases: tuple[BfclCase, ...]
    steps: tuple[TraceStep, ...]

    def function_docs(self) -> list[dict[str, Any]]:
        """The docs of every function its cases offer, each name once."""
        seen: dict[str, dict[str, Any]] = {}
        for case in self.cases:
            for doc in case.function_docs():
                seen.setdefault(doc["name"], doc)
        return list(seen.values())


def workflows(agents: int, steps: int, cases: Seq[BfclCase]) -> list[Workflow]:
    """`agents` workflows of `steps` steps each, every agent on its own cases (chained when one is too short)."""
    out = []
    pool = list(cases)
    for i in range(agents):
        rotated = pool[i * len(pool) // agents:] + pool[:i * len(pool) // agents]
        chosen = chained_steps(rotated, steps)
        used = {s.case_id for s in chosen}
        out.append(Workflow(tuple(c for c in rotated if c.id in used), tuple(chosen)))
    return out


# ---------------------------------------------------------------------------------------------- rendering
# The one place that turns a trace into tokens (the agent context formats will replace it): ChatML-style messages
# through the tokenizer's chat template, a call written as `<tool_call>{json}</tool_call>` by the assistant.


@dataclass(frozen=True)
class Segment:
    """A piece of conversation as text and as the token ids every mode feeds the model."""

    text: str
    ids: tuple[int, ...]


def compact_doc(doc: dict[str, Any]) -> str:
    """One line per function: `name(required, optional?): what it does` (BFCL's full JSON docs are ~3k tokens)."""
    params = doc.get("parameters", {})
    required = set(params.get("required", ()))
    names = [p if p in required else f"{p}?" for p in params.get("properties", {})]
    about = doc.get("description", "").split("Tool description:")[-1].strip()
    about = re.split(r"(?<=\.)\s", about, maxsplit=1)[0]
    return f"{doc['name']}({', '.join(names)}): {about}"


def call_text(call: TraceCall) -> str:
    """The text an assistant writes for a call."""
    return "<tool_call>" + json.dumps({"name": call.name, "arguments": call.arguments}) + "</tool_call>"


def literal_grammar(text: str) -> Grammar:
    """A grammar (GBNF, as llama.cpp and xgrammar read it) that accepts exactly `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return Grammar(f'root ::= "{escaped}"')


class ChatRendering:
    """Renders a workflow's pieces through the tokenizer's chat template, each piece tokenized once."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._base = [{"role": "system", "content": "S"}]
        marker = "\x00CALL\x00"
        closed = self._render([*self._base, {"role": "assistant", "content": marker}], False)
        self._close = closed[closed.index(marker) + len(marker):]  # what ends an assistant turn after its content

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))

    def _segment(self, text: str) -> Segment:
        return Segment(text, tuple(self._tok.encode(text, add_special_tokens=False)))

    def system(self, workflow: Workflow) -> Segment:
        """The system turn: what the agent does and the tools it may call."""
        tools = "\n".join(compact_doc(d) for d in workflow.function_docs())
        content = ("You are a tool-using agent. Answer each request with one call per step, written as "
                   '<tool_call>{"name": ..., "arguments": {...}}</tool_call>. Tools:\n' + tools)
        return self._segment(self._render([{"role": "system", "content": content}], False))

    def delta(self, step: TraceStep, previous: TraceStep | None, previous_call_end: str) -> Segment:
        """What a step appends: the end of the last call's turn, its tool result, the next user turn, the prompt.

        `previous_call_end` is the text the previous generation already wrote of the turn's end (its EOS).
        """
        msgs: list[dict[str, str]] = []
        if previous is not None:
            msgs.append({"role": "tool", "content": previous.result})
        if step.user:
            msgs.append({"role": "user", "content": step.user})
        base = self._render(self._base, False)
        text = self._render([*self._base, *msgs], True)[len(base):]
        if previous is not None:
            if not self._close.startswith(previous_call_end):
                previous_call_end = ""
            text = self._close[len(previous_call_end):] + text
        return self._segment(text)


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


async def _generate(engine: Engine, seq: Sequence, params: SamplingParams) -> tuple[str, list[int]]:
    text, ids = "", []
    async for delta in engine.generate(seq, params):
        text += delta.text
        ids.extend(delta.token_ids)
    return text, ids


async def _retrying(op: Any, deadline_s: float) -> int:
    """Run `op()` again while the engine refuses it for lack of KV (every other sequence busy or pinned).

    The engine refuses at once instead of waiting for a pin's TTL or a generation to end, so an agent under
    budget pressure waits a little and retries; the retries are counted in the figures.
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
            out.text, out.ids = await _generate(eng, self._seq, params)

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
            out.text, out.ids = await _generate(eng, seq, params)

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


# ---------------------------------------------------------------------------------------------- the agent loop


async def run_agent(agent_id: int, mode: AgentMode, workflow: Workflow, rendering: ChatRendering,
                    tokenizer: Any, tool_latency_s: float, system_tokens: int) -> list[StepRecord]:
    """Replay one workflow through one mode: per step, append Δ, write the forced call, run the tool."""
    records: list[StepRecord] = []
    instances: dict[str, dict[str, Any]] = {}
    cases = {c.id: c for c in workflow.cases}
    context = system_tokens
    previous: TraceStep | None = None
    previous_end = ""
    for i, step in enumerate(workflow.steps):
        delta = rendering.delta(step, previous, previous_end)
        text = call_text(step.call)
        n_call = len(tokenizer.encode(text, add_special_tokens=False))
        params = SamplingParams(max_tokens=n_call + CALL_SLACK_TOKENS, temperature=0.0,
                                structured=literal_grammar(text))
        t0 = time.perf_counter()
        out = await mode.step(delta, params, text)
        model_s = time.perf_counter() - t0
        await mode.tool_started(tool_latency_s)
        t1 = time.perf_counter()
        if step.case_id not in instances:
            instances[step.case_id] = fresh_instances(cases[step.case_id])
        # The real function runs; its recorded result is what gets appended. A failing tool is the trace's business.
        with contextlib.suppress(Exception):
            execute(step.call, instances[step.case_id])
        await asyncio.sleep(tool_latency_s)
        tool_s = time.perf_counter() - t1
        await mode.tool_done()
        written = len(out.ids) if out.completion_tokens is None else out.completion_tokens
        context += len(delta.ids) + written
        records.append(StepRecord(agent_id, i, model_s, tool_s, len(delta.ids), written, context,
                                  out.computed, out.reused, out.recomputed, out.text.strip() == text,
                                  out.capacity_retries))
        previous = step
        previous_end = out.text[len(text):] if out.text.startswith(text) else ""
        if out.ids and out.ids[-1] in getattr(tokenizer, "all_special_ids", ()):
            previous_end = tokenizer.decode(out.ids[-1:], skip_special_tokens=False)
    await mode.close()
    return records


# ---------------------------------------------------------------------------------------------- runs and figures


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class ModeRun:
    """One mode on one scenario: per-step figures and the engine's counters over the run."""

    mode: str
    agents: int
    steps: int
    wall_s: float
    records: list[StepRecord] = field(default_factory=list)
    engine: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Per-step latency median and p90, tokens computed per step, call fidelity, engine counter deltas."""
        model = [r.model_s for r in self.records]
        computed = [r.computed for r in self.records]
        return {
            "mode": self.mode, "agents": self.agents, "steps": self.steps, "wall_s": self.wall_s,
            "step_median_s": statistics.median(model) if model else math.nan,
            "step_p90_s": _quantile(model, 0.9),
            "step_mean_s": statistics.fmean(model) if model else math.nan,
            "computed_per_step_median": statistics.median(computed) if computed else 0,
            "computed_per_step_mean": statistics.fmean(computed) if computed else 0.0,
            "computed_total": sum(computed),
            "reused_total": sum(r.reused for r in self.records),
            "recomputed_total": sum(r.recomputed for r in self.records),
            "delta_per_step_mean": statistics.fmean(r.delta_tokens for r in self.records) if self.records else 0.0,
            "final_context_max": max((r.context_tokens for r in self.records), default=0),
            "calls_matched": sum(r.call_matched for r in self.records),
            "calls": len(self.records),
            "capacity_retries": sum(r.capacity_retries for r in self.records),
            "engine": self.engine,
        }


@dataclass(frozen=True)
class Scenario:
    """A number of interleaved agents on workflows of a number of steps, and the KV budget they share."""

    agents: int
    steps: int
    kv_budget_tokens: int | None  # None: unbounded (a single agent has its whole context)


@dataclass
class AgentBenchConfig:
    """What the bench runs (see `moa-stream bench agent --help`)."""

    model: str | None = None
    agents: tuple[int, ...] = (1, 4, 8)
    steps: tuple[int, ...] = (6, 35)
    cases: int = 40
    tool_latency_ms: float = 200.0
    kv_fraction: float = 0.9
    modes: tuple[str, ...] = LOCAL_MODES
    llamacpp: bool = True
    all_pairs: bool = False
    pin_ttl_s: float | None = None  # None: pinned until the tool returns

    def scenarios_shape(self) -> list[tuple[int, int]]:
        """(agents, steps) pairs: every agent count on the shortest workflow, one agent on the longer ones."""
        short = min(self.steps)
        return [(a, s) for s in sorted(self.steps) for a in sorted(self.agents)
                if self.all_pairs or a == 1 or s == short]


def _engine_counters(engine: Engine) -> dict[str, int]:
    st = engine.stats()
    return {"prefill_computed": st.prefill_computed, "prefill_reused": st.prefill_reused,
            "decode_tokens": st.decode_tokens, "evictions": st.evictions}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def conversations(flows: Seq[Workflow], rendering: ChatRendering, tokenizer: Any) -> list[list[int]]:
    """Each workflow's final context as token ids (system, every Δ and every call), as the bench builds it."""
    out = []
    for flow in flows:
        ids = list(rendering.system(flow).ids)
        previous = None
        for step in flow.steps:
            ids += rendering.delta(step, previous, "").ids
            ids += tokenizer.encode(call_text(step.call), add_special_tokens=False)
            previous = step
        out.append(ids)
    return out


def kv_footprint_tokens(contexts: Seq[Seq[int]], block_size: int = 16) -> int:
    """Tokens of KV the contexts need together when equal prefixes share full blocks (as the prefix cache does)."""
    seen: set[int] = set()
    partial = 0
    for ids in contexts:
        key = 0
        full = len(ids) // block_size
        for i in range(full):
            key = hash((key, tuple(ids[i * block_size:(i + 1) * block_size])))
            seen.add(key)
        partial += len(ids) - full * block_size
    return len(seen) * block_size + partial


def make_mode(name: str, engine: Engine, system: Segment, pin_ttl_s: float | None) -> AgentMode:
    """The agent class of a local mode."""
    if name == "stateful":
        return StatefulAgent(engine, system, pin_ttl_s)
    if name == "prefix-cache":
        return ReopeningAgent(engine, system, share=True)
    if name == "reprefill":
        return ReopeningAgent(engine, system, share=False)
    raise ValueError(f"unknown mode {name!r}; pick from {', '.join(LOCAL_MODES)}")


async def run_local_mode(mode: str, engine: Engine, flows: Seq[Workflow], rendering: ChatRendering,
                         tool_latency_s: float, pin_ttl_s: float | None = None) -> ModeRun:
    """Every workflow through one local mode, its agents interleaved on the engine."""
    tok = engine.tokenizer
    systems = [rendering.system(f) for f in flows]
    before = _engine_counters(engine)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(
        run_agent(i, make_mode(mode, engine, systems[i], pin_ttl_s), flow, rendering, tok, tool_latency_s,
                  len(systems[i].ids))
        for i, flow in enumerate(flows)))
    wall = time.perf_counter() - t0
    records = [r for rs in results for r in rs]
    return ModeRun(mode, len(flows), len(flows[0].steps), wall, records,
                   _delta(_engine_counters(engine), before))


async def run_llamacpp_mode(base_url: str, flows: Seq[Workflow], rendering: ChatRendering, tokenizer: Any,
                            tool_latency_s: float) -> ModeRun:
    """Every workflow against llama.cpp's server, agents interleaved (the server queues their requests)."""
    import httpx

    systems = [rendering.system(f) for f in flows]
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=3600.0) as client:
        results = await asyncio.gather(*(
            run_agent(i, LlamaServerAgent(client, systems[i]), flow, rendering, tokenizer, tool_latency_s,
                      len(systems[i].ids))
            for i, flow in enumerate(flows)))
    wall = time.perf_counter() - t0
    return ModeRun("llamacpp", len(flows), len(flows[0].steps), wall, [r for rs in results for r in rs])


# ---------------------------------------------------------------------------------------------- llama.cpp's server


def start_llama_server(n_ctx: int, cache_bytes: int) -> PeerServer:
    """llama-cpp-python's server on the default model's GGUF with its prompt cache (state RAM cache) on."""
    from engine import models
    from engine.llama_server import start_server

    return start_server(models.default_gguf_path(), min(os.cpu_count() or 2, 4), n_ctx, extra_args=[
        "--cache", "True", "--cache_type", "ram", "--cache_size", str(cache_bytes), "--verbose", "True"])


# ---------------------------------------------------------------------------------------------- the bench


def kv_bytes_per_token(engine: Any) -> int:
    """KV bytes one token takes in the engine's model (keys and values, every layer)."""
    cfg = engine.model.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    elem = next(engine.model.parameters()).element_size()
    return 2 * int(cfg.num_hidden_layers) * heads * head_dim * elem


def ratios(runs: Seq[ModeRun], shortest: int, longest: int, most_agents: int) -> dict[str, float | None]:
    """The contract's ratios (per-step median latency over stateful's); None where a run is missing."""
    med = {(r.mode, r.agents, r.steps): r.summary()["step_median_s"] for r in runs}

    def ratio(mode: str, agents: int, steps: int) -> float | None:
        a, b = med.get((mode, agents, steps)), med.get(("stateful", agents, steps))
        return a / b if a is not None and b else None

    return {
        "ratio_reprefill_6": ratio("reprefill", 1, 6),
        "ratio_reprefill_35": ratio("reprefill", 1, 35),
        "ratio_prefix_cache_8": ratio("prefix-cache", 8, shortest),
        "ratio_llamacpp_8": ratio("llamacpp", 8, shortest),
        f"ratio_reprefill_{shortest}_steps_{most_agents}_agents": ratio("reprefill", most_agents, shortest),
        f"ratio_prefix_cache_{longest}_steps_1_agent": ratio("prefix-cache", 1, longest),
    }


async def run_agent_bench(engine_factory: Any, config: AgentBenchConfig) -> dict[str, Any]:
    """Run every scenario and mode; returns the JSON the CLI prints (contract fields at the top level).

    `engine_factory(kv_cache_bytes)` builds a fresh engine for a scenario's KV budget (None: the default).
    """
    cases = load_cases("base", limit=config.cases)
    tool_s = config.tool_latency_ms / 1000.0
    runs: list[ModeRun] = []
    scenarios: list[dict[str, Any]] = []
    shortest, longest = min(config.steps), max(config.steps)
    most_agents = max(config.agents)
    probe = engine_factory(None)
    tok = probe.tokenizer
    rendering = ChatRendering(tok)
    per_token = kv_bytes_per_token(probe)
    await probe.shutdown()
    for agents, steps in config.scenarios_shape():
        flows = workflows(agents, steps, cases)
        convs = conversations(flows, rendering, tok)
        contexts = [len(c) for c in convs]
        footprint = kv_footprint_tokens(convs)
        budget = None
        if agents > 1:  # a fraction of what they need together (shared prefixes counted once), yet room for
            # the largest context and a block per agent, so every step can run once the others are evicted
            budget = max(int(config.kv_fraction * footprint), max(contexts) + 32 * agents)
        scenario = Scenario(agents, steps, budget)
        scenarios.append({**asdict(scenario), "summed_context_tokens": sum(contexts), "kv_footprint_tokens": footprint,
                          "max_context_tokens": max(contexts)})
        for mode in config.modes:
            engine = engine_factory(budget * per_token if budget else None)
            try:
                await _warm(engine)
                runs.append(await run_local_mode(mode, engine, flows, rendering, tool_s, config.pin_ttl_s))
            finally:
                await engine.shutdown()
        if config.llamacpp and agents == most_agents and steps == shortest:
            peer = start_llama_server(n_ctx=max(contexts) + 256, cache_bytes=(budget or footprint) * per_token)
            try:
                before = peer.counters()
                run = await run_llamacpp_mode(peer.base_url, flows, rendering, tok, tool_s)
                run.engine = _delta(peer.counters(), before)
                runs.append(run)
            finally:
                peer.stop()
    out: dict[str, Any] = dict(ratios(runs, shortest, longest, most_agents))
    out["targets"] = {k: f">= {v}" for k, v in TARGETS.items()}
    out["runs"] = [r.summary() for r in runs]
    out["scenarios"] = scenarios
    out["setup"] = {
        "model": config.model or "default (SmolLM2-135M-Instruct)", "cases": config.cases,
        "tool_latency_ms": config.tool_latency_ms, "kv_fraction": config.kv_fraction,
        "pin_ttl_s": config.pin_ttl_s, "kv_bytes_per_token": per_token,
        "step_latency": "model time of a step: Δ appended and the forced call written (tool time excluded)",
    }
    return out


async def _warm(engine: Engine) -> None:
    """A prefill of a few hundred tokens and a short decode, so the first timed step pays no one-off costs."""
    ids = list(engine.tokenizer.encode("The agent calls a tool. " * 64, add_special_tokens=False))
    seq = await engine.open(ids[:WARMUP_TOKENS], cache_salt="warmup")
    try:
        await _generate(engine, seq, SamplingParams(max_tokens=4, ignore_eos=True))
    finally:
        await engine.close(seq)
