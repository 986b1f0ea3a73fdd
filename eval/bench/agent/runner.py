"""Running the modes over interleaved agents, and the figures (per-step latency, ratios, JSON contract)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from engine import CapacityError, Engine, SamplingParams
from moa_stream.tools import BfclCase, bfcl_execute, fresh_instances

from ...bfcl.traces import TraceStep, load_cases
from .engines import EngineFactory, transformers_kv_bytes_per_token
from .mode_run import ModeRun
from .modes import LOCAL_MODES, AgentMode, LlamaServerAgent, StepRecord, generate_all, make_mode
from .prompt_lookup_bench import PromptLookupBenchConfig, run_prompt_lookup_bench
from .speculation import SpeculationBenchConfig, run_speculation_bench
from .workload import ChatRendering, Workflow, call_text, literal_grammar, workflows

if TYPE_CHECKING:
    from engine.llama_server import PeerServer

# Targets printed beside the figures (arXiv 2605.26289's per-turn gains, and ours against the peers), not asserted.
TARGETS: dict[str, float] = {
    "ratio_reprefill_6": 2.1,
    "ratio_reprefill_35": 4.2,
    "ratio_prefix_cache_8": 1.3,
    "ratio_llamacpp_8": 1.0,
    "speculation_saving_200ms": 0.15,  # arXiv 2512.15834: up to 21% less time per turn on BFCL
    "prompt_lookup_speedup": 1.5,
}
CALL_SLACK_TOKENS = 8  # room past the call's own length: a forced call may tokenize a little differently
WARMUP_TOKENS = 300


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
            bfcl_execute(step.call, instances[step.case_id])
        await asyncio.sleep(tool_latency_s)
        tool_s = time.perf_counter() - t1
        await mode.tool_done()
        written = len(out.ids) if out.completion_tokens is None else out.completion_tokens
        context += len(delta.ids) + written
        records.append(StepRecord(agent_id, i, model_s, tool_s, len(delta.ids), written, context,
                                  out.computed, out.reused, out.recomputed, out.text.strip() == text,
                                  out.capacity_retries, out.decode_s, out.decode_tokens))
        previous = step
        previous_end = out.text[len(text):] if out.text.startswith(text) else ""
        if out.ids and out.ids[-1] in getattr(tokenizer, "all_special_ids", ()):
            previous_end = tokenizer.decode(out.ids[-1:], skip_special_tokens=False)
    await mode.close()
    return records


# ---------------------------------------------------------------------------------------------- runs and figures


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
    kv_fraction: float = 0.9  # the budget of the headline figures (ratio_prefix_cache_8 and the others)
    kv_fractions: tuple[float, ...] = ()  # more budgets the multi-agent scenarios run at (by_budget figures)
    modes: tuple[str, ...] = LOCAL_MODES
    llamacpp: bool = True
    all_pairs: bool = False
    pin_ttl_s: float | None = None  # None: pinned until the tool returns
    speculation: SpeculationBenchConfig | None = field(default_factory=SpeculationBenchConfig)  # None: section off
    prompt_lookup: PromptLookupBenchConfig | None = field(default_factory=PromptLookupBenchConfig)  # None: off

    def budgets(self) -> tuple[float, ...]:
        """Every fraction the multi-agent scenarios run at, the headline one first."""
        return (self.kv_fraction, *(f for f in dict.fromkeys(self.kv_fractions) if f != self.kv_fraction))

    def scenarios_shape(self) -> list[tuple[int, int]]:
        """(agents, steps) pairs: every agent count on the shortest workflow, one agent on the longer ones."""
        short = min(self.steps)
        return [(a, s) for s in sorted(self.steps) for a in sorted(self.agents)
                if self.all_pairs or a == 1 or s == short]


def engine_counters(engine: Engine) -> dict[str, int]:
    st = engine.stats()
    return {"prefill_computed": st.prefill_computed, "prefill_reused": st.prefill_reused,
            "decode_tokens": st.decode_tokens, "evictions": st.evictions, "draft_tokens": st.draft_tokens,
            "draft_accepted": st.draft_accepted, "preemptions": st.preemptions, "evicted_tokens": st.evicted_tokens,
            "recomputed_after_eviction": st.recomputed_after_eviction}


def counter_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
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


async def run_local_mode(mode: str, engine: Engine, flows: Seq[Workflow], rendering: ChatRendering,
                         tool_latency_s: float, pin_ttl_s: float | None = None) -> ModeRun:
    """Every workflow through one local mode, its agents interleaved on the engine."""
    tok = engine.tokenizer
    systems = [rendering.system(f) for f in flows]
    before = engine_counters(engine)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(
        run_agent(i, make_mode(mode, engine, systems[i], pin_ttl_s), flow, rendering, tok, tool_latency_s,
                  len(systems[i].ids))
        for i, flow in enumerate(flows)))
    wall = time.perf_counter() - t0
    records = [r for rs in results for r in rs]
    return ModeRun(mode, len(flows), len(flows[0].steps), wall, records,
                   counter_delta(engine_counters(engine), before))


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


def start_llama_server(n_ctx: int, cache_bytes: int, threads: int | None = None) -> PeerServer:
    """llama-cpp-python's server on the default model's GGUF with its prompt cache (state RAM cache) on."""
    from engine import models
    from engine.llama_server import start_server

    threads = threads or min(os.cpu_count() or 2, 4)
    return start_server(models.default_gguf_path(), threads, n_ctx, extra_args=[
        "--cache", "True", "--cache_type", "ram", "--cache_size", str(cache_bytes), "--verbose", "True"])


# ---------------------------------------------------------------------------------------------- the bench


kv_bytes_per_token = transformers_kv_bytes_per_token  # the name the bench's tests and callers know


def ratios(runs: Seq[ModeRun], shortest: int, longest: int, most_agents: int,
           kv_fraction: float | None = None) -> dict[str, float | None]:
    """The contract's ratios (per-step median latency over stateful's) at one budget (unbounded single-agent runs
    count at every budget; None: every run); None where a run is missing."""
    med = {(r.mode, r.agents, r.steps): r.summary()["step_median_s"] for r in runs
           if kv_fraction is None or r.kv_fraction in (None, kv_fraction)}

    def ratio(mode: str, agents: int, steps: int) -> float | None:
        a, b = med.get((mode, agents, steps)), med.get(("stateful", agents, steps))
        return a / b if a is not None and b else None

    return {
        "ratio_reprefill_6": ratio("reprefill", 1, 6),
        "ratio_reprefill_35": ratio("reprefill", 1, 35),
        "ratio_prefix_cache_8": ratio("prefix-cache", 8, shortest),
        "ratio_llamacpp_8": ratio("llamacpp", 8, shortest),
        f"ratio_reprefill_{shortest}_steps_{most_agents}_agents": ratio("reprefill", most_agents, shortest),
        f"ratio_llamacpp_{shortest}_steps_{most_agents}_agents": ratio("llamacpp", most_agents, shortest),
        f"ratio_prefix_cache_{longest}_steps_1_agent": ratio("prefix-cache", 1, longest),
    }


async def run_agent_bench(engine_factory: EngineFactory, config: AgentBenchConfig) -> dict[str, Any]:
    """Run every scenario and mode, then the speculation and prompt-lookup sections; returns the JSON the CLI prints.

    `engine_factory(kv_budget_tokens, prompt_lookup)` builds a fresh engine for a scenario's KV budget in tokens
    (None: the engine's default). The contract fields are at the top level.
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
    per_token = engine_factory.kv_bytes_per_token(probe)
    await probe.shutdown()
    for agents, steps, fraction in _scenario_budgets(config):
        flows = workflows(agents, steps, cases)
        convs = conversations(flows, rendering, tok)
        contexts = [len(c) for c in convs]
        footprint = kv_footprint_tokens(convs)
        budget = None
        if fraction is not None:  # a fraction of what they need together (shared prefixes counted once), yet
            # room for the largest context and a block per agent, so every step can run once the others are evicted
            budget = max(int(fraction * footprint), max(contexts) + 32 * agents)
        scenario = Scenario(agents, steps, budget)
        scenarios.append({**asdict(scenario), "kv_fraction": fraction, "summed_context_tokens": sum(contexts),
                          "kv_footprint_tokens": footprint, "max_context_tokens": max(contexts)})
        for mode in config.modes:
            engine = engine_factory(budget)
            try:
                await _warm(engine)
                run = await run_local_mode(mode, engine, flows, rendering, tool_s, config.pin_ttl_s)
                run.kv_fraction = fraction
                runs.append(run)
            except CapacityError as exc:  # this budget is too small for the mode: said in the JSON, the rest runs
                scenarios[-1].setdefault("failed", {})[mode] = str(exc)
            finally:
                await engine.shutdown()
        if config.llamacpp and agents == most_agents and steps == shortest and fraction == config.kv_fraction:
            peer = start_llama_server(n_ctx=max(contexts) + 256, cache_bytes=(budget or footprint) * per_token,
                                      threads=engine_factory.peer_threads())
            try:
                before = peer.counters()
                run = await run_llamacpp_mode(peer.base_url, flows, rendering, tok, tool_s)
                run.engine = counter_delta(peer.counters(), before)
                run.kv_fraction = fraction
                runs.append(run)
            finally:
                peer.stop()
    out: dict[str, Any] = dict(ratios(runs, shortest, longest, most_agents, config.kv_fraction))
    # {fraction: ratio} over every budget run, the headline one included (JSON keys are strings: "0.9").
    out["ratio_prefix_cache_8_by_budget"] = {
        str(f): ratios(runs, shortest, longest, most_agents, f)["ratio_prefix_cache_8"] for f in config.budgets()}
    out.update(await _speculation_section(engine_factory, cases, config))
    out.update(await _prompt_lookup_section(engine_factory, cases, rendering, config))
    out["targets"] = {k: f">= {v}" for k, v in TARGETS.items()}
    out["runs"] = [r.summary() for r in runs]
    out["scenarios"] = scenarios
    out["setup"] = {
        "model": config.model or "default (SmolLM2-135M-Instruct)", "backend": engine_factory.backend,
        "cases": config.cases, "tool_latency_ms": config.tool_latency_ms, "kv_fraction": config.kv_fraction,
        "kv_fractions": list(config.budgets()),
        "pin_ttl_s": config.pin_ttl_s, "kv_bytes_per_token": per_token,
        "peer_threads": engine_factory.peer_threads(),
        "step_latency": "model time of a step: Δ appended and the forced call written (tool time excluded)",
    }
    return out


def _scenario_budgets(config: AgentBenchConfig) -> list[tuple[int, int, float | None]]:
    """(agents, steps, fraction) of every scenario run: a single agent unbounded once, several at every budget."""
    return [(a, s, f) for a, s in config.scenarios_shape()
            for f in ((None,) if a == 1 else config.budgets())]


async def _speculation_section(factory: EngineFactory, cases: Seq[BfclCase], config: AgentBenchConfig
                               ) -> dict[str, Any]:
    """The speculation fields (null with the reason when the section is off)."""
    if config.speculation is None:
        return {"speculation_saving_200ms": None, "speculation_alpha": None, "speculation": {"skipped": "off"}}
    engine = factory(None)
    try:
        await _warm(engine)
        return await run_speculation_bench(engine, cases, config.speculation)
    finally:
        await engine.shutdown()


async def _prompt_lookup_section(factory: EngineFactory, cases: Seq[BfclCase], rendering: ChatRendering,
                                 config: AgentBenchConfig) -> dict[str, Any]:
    """The prompt-lookup fields (null with the reason when the section is off or the engine lacks it)."""
    if config.prompt_lookup is None:
        return {"prompt_lookup_speedup": None, "prompt_lookup_acceptance": None, "prompt_lookup": {"skipped": "off"}}
    flows = workflows(1, config.prompt_lookup.steps, cases)

    async def stateful(engine: Engine, flows: Seq[Workflow], rendering: ChatRendering) -> ModeRun:
        return await run_local_mode("stateful", engine, flows, rendering, 0.0, config.pin_ttl_s)

    return await run_prompt_lookup_bench(factory, flows, rendering, stateful, _warm, config.prompt_lookup)


async def _warm(engine: Engine) -> None:
    """A prefill of a few hundred tokens and a short decode, so the first timed step pays no one-off costs."""
    ids = list(engine.tokenizer.encode("The agent calls a tool. " * 64, add_special_tokens=False))
    seq = await engine.open(ids[:WARMUP_TOKENS], cache_salt="warmup")
    try:
        await generate_all(engine, seq, SamplingParams(max_tokens=4, ignore_eos=True))
    finally:
        await engine.close(seq)
