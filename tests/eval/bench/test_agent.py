"""The agent bench on a tiny random model: tokens each mode computes per step, the JSON contract, pinning."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import SamplingParams
from engine.transformers_engine import TransformersEngine
from eval.bench.agent import (
    AgentBenchConfig,
    ChatRendering,
    LlamaCppFactory,
    ModeRun,
    PromptLookupBenchConfig,
    SpeculationBenchConfig,
    StatefulAgent,
    TransformersFactory,
    Workflow,
    call_text,
    conversations,
    kv_bytes_per_token,
    kv_footprint_tokens,
    literal_grammar,
    run_agent_bench,
    run_local_mode,
    workflows,
)
from eval.bench.agent.speculation import run_speculation_bench
from eval.bfcl.traces import load_cases, replay
from tests.conftest import tiny_llama

pytest.importorskip("bfcl_eval")

BLOCK = 16


@pytest.fixture(scope="module")
def loaded() -> Any:
    """A tiny random Llama whose vocabulary covers the default tokenizer (the bench renders real chat text)."""
    from transformers import AutoTokenizer

    from engine import models

    return tiny_llama(vocab=len(AutoTokenizer.from_pretrained(models.resolve(None))))


def make_engine(loaded: Any, kv_cache_bytes: int | None = None) -> TransformersEngine:
    """A fresh engine over the tiny model (contexts of ~1k tokens: the model len is raised past its config's)."""
    return TransformersEngine(loaded, block_size=BLOCK, kv_cache_bytes=kv_cache_bytes, max_model_len=8192)


async def run_mode(loaded: Any, mode: str, agents: int = 1, steps: int = 3,
                   kv_cache_bytes: int | None = None) -> ModeRun:
    eng = make_engine(loaded, kv_cache_bytes)
    try:
        flows = workflows(agents, steps, load_cases("base", limit=8))
        return await run_local_mode(mode, eng, flows, ChatRendering(eng.tokenizer), tool_latency_s=0.0)
    finally:
        await eng.shutdown()


def prompt_tokens(run: ModeRun, i: int) -> int:
    """Tokens a step's model call read: the context before the step's call was written."""
    r = run.records[i]
    return r.context_tokens - r.call_tokens


async def test_stateful_steps_compute_only_their_delta(loaded: Any) -> None:
    run = await run_mode(loaded, "stateful")
    first, *rest = run.records
    assert first.computed == prompt_tokens(run, 0)  # the system turn and the first user turn
    for r in rest:
        assert r.computed == r.delta_tokens and r.reused == 0 and r.recomputed == 0


async def test_prefix_cache_reuses_the_previous_steps_full_blocks(loaded: Any) -> None:
    run = await run_mode(loaded, "prefix-cache")
    assert run.records[0].reused == 0
    for i in range(1, len(run.records)):
        r, before = run.records[i], run.records[i - 1]
        # The previous step's sequence was closed, but its full blocks stay cached (its last token never computed).
        assert r.reused == (before.context_tokens - 1) // BLOCK * BLOCK
        assert r.computed == prompt_tokens(run, i) - r.reused
        assert r.computed < r.delta_tokens + 2 * BLOCK


async def test_reprefill_computes_the_whole_context_every_step(loaded: Any) -> None:
    run = await run_mode(loaded, "reprefill")
    for i, r in enumerate(run.records):
        assert r.reused == 0 and r.computed == prompt_tokens(run, i)


async def test_every_mode_reads_and_writes_the_same_tokens(loaded: Any) -> None:
    runs = [await run_mode(loaded, mode) for mode in ("stateful", "prefix-cache", "reprefill")]
    shapes = [[(r.delta_tokens, r.call_tokens, r.context_tokens) for r in run.records] for run in runs]
    assert shapes[0] == shapes[1] == shapes[2]


def test_a_call_is_rendered_and_forced_as_its_literal_text() -> None:
    call = replay(load_cases("base", limit=1)[0]).steps[0].call
    text = call_text(call)
    assert text.startswith("<tool_call>") and json.loads(text[len("<tool_call>"):-len("</tool_call>")])["name"] == \
        call.name
    grammar = literal_grammar('say "a\\b"\n')
    assert grammar.ebnf == 'root ::= "say \\"a\\\\b\\"\\n"'


async def test_a_pinned_agent_survives_budget_pressure_that_evicts_an_unpinned_one(loaded: Any) -> None:
    cases = load_cases("base", limit=40)
    # Two cases whose toolsets start differently, so the agents' contexts share little more than the preamble.
    first = cases[0]
    other = next(c for c in cases if c.involved_classes[0] != first.involved_classes[0])
    flows = [Workflow((c,), tuple(replay(c).steps[:2])) for c in (first, other)]
    probe = make_engine(loaded)
    per_token = kv_bytes_per_token(probe)
    rendering = ChatRendering(probe.tokenizer)
    await probe.shutdown()
    systems = [rendering.system(f) for f in flows]
    eng = make_engine(loaded, kv_cache_bytes=(sum(len(s.ids) for s in systems) + 400) * per_token)
    try:
        pinned, unpinned = (StatefulAgent(eng, s, pin_ttl_s=None) for s in systems)
        params = SamplingParams(max_tokens=4)
        await pinned.step(rendering.delta(flows[0].steps[0], None, ""), params, "")
        await unpinned.step(rendering.delta(flows[1].steps[0], None, ""), params, "")
        await pinned.tool_started(60.0)
        st = eng.stats()
        free_tokens = (st.kv_bytes_budget - st.kv_bytes_resident) // per_token
        # A newcomer needing more than is free: someone idle must go, and only the unpinned agent may.
        newcomer = await eng.open(list(range(1000, 1000 + free_tokens + 3 * BLOCK)))
        assert eng.stats().evictions >= 1
        await eng.close(newcomer)
        # The pinned agent's next step computes only its Δ: its KV stayed resident.
        again = await pinned.step(rendering.delta(flows[0].steps[1], flows[0].steps[0], ""), params, "")
        assert again.recomputed == 0
        await pinned.tool_done()
        # The unpinned one was the victim: its next step recomputes its context transparently.
        redo = await unpinned.step(rendering.delta(flows[1].steps[1], flows[1].steps[0], ""), params, "")
        assert redo.recomputed > 0
        await pinned.close()
        await unpinned.close()
    finally:
        await eng.shutdown()


async def test_interleaved_stateful_agents_finish_under_a_budget_below_their_contexts(loaded: Any) -> None:
    probe = make_engine(loaded)
    per_token = kv_bytes_per_token(probe)
    await probe.shutdown()
    flows = workflows(4, 3, load_cases("base", limit=8))
    convs = conversations(flows, ChatRendering(loaded.tokenizer), loaded.tokenizer)
    budget = max(len(c) for c in convs) + 8 * BLOCK
    assert budget < kv_footprint_tokens(convs, BLOCK)  # the budget is really short, shared prefixes counted once
    run = await run_mode(loaded, "stateful", agents=4, steps=3, kv_cache_bytes=budget * per_token)
    summary = run.summary()
    assert summary["calls"] == 12 and summary["engine"]["evictions"] >= 1


async def test_the_json_has_the_contract_fields(loaded: Any) -> None:
    factory = TransformersFactory(loaded, {"block_size": BLOCK, "max_model_len": 8192})
    config = AgentBenchConfig(agents=(1, 8), steps=(6,), cases=12, tool_latency_ms=0.0, llamacpp=False,
                              speculation=None, prompt_lookup=None)
    result = await run_agent_bench(factory, config)
    json.dumps(result)
    for key in ("ratio_reprefill_6", "ratio_reprefill_35", "ratio_prefix_cache_8", "ratio_llamacpp_8"):
        assert key in result and key in result["targets"]
    assert result["ratio_reprefill_6"] > 0 and result["ratio_prefix_cache_8"] > 0
    assert result["ratio_reprefill_35"] is None and result["ratio_llamacpp_8"] is None  # not run here
    modes = {(r["mode"], r["agents"]) for r in result["runs"]}
    assert modes == {(m, a) for m in ("stateful", "prefix-cache", "reprefill") for a in (1, 8)}
    eight = next(s for s in result["scenarios"] if s["agents"] == 8)
    assert eight["kv_budget_tokens"] < eight["kv_footprint_tokens"] <= eight["summed_context_tokens"]


async def test_the_bench_runs_every_budget_and_keeps_the_headline_ratio(loaded: Any) -> None:
    """--kv-fraction 0.9,0.5: the 8 agents run at both budgets; ratio_prefix_cache_8 stays the 0.9 run's."""
    factory = TransformersFactory(loaded, {"block_size": BLOCK, "max_model_len": 8192})
    config = AgentBenchConfig(agents=(8,), steps=(2,), cases=8, tool_latency_ms=0.0, llamacpp=False,
                              modes=("stateful", "prefix-cache"), kv_fraction=0.9, kv_fractions=(0.9, 0.5),
                              speculation=None, prompt_lookup=None)
    result = await run_agent_bench(factory, config)
    json.dumps(result)
    by_budget = result["ratio_prefix_cache_8_by_budget"]
    assert set(by_budget) == {"0.9", "0.5"} and all(v > 0 for v in by_budget.values())
    assert result["ratio_prefix_cache_8"] == by_budget["0.9"]
    assert sorted((r["mode"], r["kv_fraction"]) for r in result["runs"]) == sorted(
        (m, f) for m in ("stateful", "prefix-cache") for f in (0.9, 0.5))
    budgets = {s["kv_fraction"]: s["kv_budget_tokens"] for s in result["scenarios"]}
    assert budgets[0.5] <= budgets[0.9] < result["scenarios"][0]["kv_footprint_tokens"]
    assert result["setup"]["kv_fractions"] == [0.9, 0.5]


# ---------------------------------------------------------------------------------------------- the llama.cpp engine


@pytest.fixture(scope="module")
def llamacpp() -> Any:
    """The llama.cpp engine factory on the shipped GGUF (skipped where llama-cpp-python is missing)."""
    pytest.importorskip("llama_cpp")
    return LlamaCppFactory()


async def test_the_modes_on_the_llamacpp_engine_compute_what_they_should(llamacpp: Any) -> None:
    flows = workflows(1, 2, load_cases("base", limit=4))
    runs = {}
    for mode in ("stateful", "prefix-cache", "reprefill"):
        eng = llamacpp(4096)
        try:
            runs[mode] = await run_local_mode(mode, eng, flows, ChatRendering(eng.tokenizer), tool_latency_s=0.0)
        finally:
            await eng.shutdown()
    for mode, run in runs.items():
        assert run.summary()["calls_matched"] == len(run.records) == 2, mode
        # The figures come from the engine's own counters: the steps' sum is what the engine computed.
        assert sum(r.computed for r in run.records) == run.engine["prefill_computed"], mode
    first, second = runs["stateful"].records
    assert first.computed == prompt_tokens(runs["stateful"], 0)
    assert second.computed == second.delta_tokens and second.reused == 0  # Δ only
    for i, r in enumerate(runs["reprefill"].records):
        assert r.reused == 0 and r.computed == prompt_tokens(runs["reprefill"], i)  # the whole context
    again = runs["prefix-cache"].records[1]
    assert again.reused > 0 and again.computed < prompt_tokens(runs["prefix-cache"], 1) // 2


# ---------------------------------------------------------------------------------------------- issue 14 sections


async def test_the_speculation_section_runs_the_agent_off_and_on(loaded: Any) -> None:
    eng = make_engine(loaded)
    try:
        config = SpeculationBenchConfig(latencies_ms=(0.0, 50.0), cases=1, steps=3)
        out = await run_speculation_bench(eng, load_cases("base", limit=8), config)
    finally:
        await eng.shutdown()
    section = out["speculation"]
    assert [f["tool_latency_ms"] for f in section["latencies"]] == [0.0, 50.0]
    assert section["setup"]["pure_calls_per_case"][0] >= 1
    for fig in section["latencies"]:
        assert fig["steps"] == 3 and fig["step_s_off"] > 0 and fig["step_s_on"] > 0
        # The history speculator saw this workflow's warm-up run: it starts pure calls, and the right ones are taken.
        assert fig["speculations_started"] >= fig["speculations_taken"] >= 1
        assert 0.0 <= fig["alpha"] <= 1.0
    assert 0.0 <= out["speculation_alpha"] <= 1.0
    assert isinstance(out["speculation_saving_200ms"], type(None))  # 200 ms was not among the latencies here


async def test_the_draft_speculator_runs_in_the_speculation_section(loaded: Any) -> None:
    """The draft forks the agent's sequence under the agent's own call grammar; the forced calls are unchanged."""
    eng = make_engine(loaded)
    try:
        config = SpeculationBenchConfig(latencies_ms=(0.0,), cases=1, steps=3, speculator="draft")
        out = await run_speculation_bench(eng, load_cases("base", limit=8), config)
        assert eng.stats().sequences_open == 0, "every draft fork was closed"
    finally:
        await eng.shutdown()
    (fig,) = out["speculation"]["latencies"]
    assert out["speculation"]["setup"]["speculator"] == "draft"
    assert fig["steps"] == 3 and fig["speculations_started"] >= fig["speculations_taken"]


async def test_a_tiny_bench_has_the_issue_14_fields(loaded: Any) -> None:
    factory = TransformersFactory(loaded, {"block_size": BLOCK, "max_model_len": 8192})
    config = AgentBenchConfig(agents=(1,), steps=(2,), cases=8, tool_latency_ms=0.0, llamacpp=False,
                              modes=("stateful",), speculation=SpeculationBenchConfig((200.0,), cases=1, steps=2),
                              prompt_lookup=PromptLookupBenchConfig(max_draft=4, steps=2))
    result = await run_agent_bench(factory, config)
    json.dumps(result)
    for key in ("speculation_saving_200ms", "prompt_lookup_speedup"):
        assert key in result["targets"]
    assert result["speculation_saving_200ms"] is not None and result["speculation_saving_200ms"] < 1.0
    assert 0.0 <= result["speculation_alpha"] <= 1.0
    lookup = result["prompt_lookup"]
    assert result["prompt_lookup_speedup"] > 0
    assert lookup["on"]["draft_tokens"] >= lookup["on"]["draft_accepted"] >= 0
    assert lookup["off"]["draft_tokens"] == 0  # no drafter, no drafts
    assert result["prompt_lookup_acceptance"] is None or 0.0 <= result["prompt_lookup_acceptance"] <= 1.0
    # Greedy output is the same with the drafter on: the same calls written, token for token.
    assert lookup["on"]["calls"] == lookup["off"]["calls"] == 2
    assert lookup["on"]["calls_matched"] == lookup["off"]["calls_matched"]
    assert lookup["on"]["decode_tokens"] == lookup["off"]["decode_tokens"]
    assert result["setup"]["backend"] == "transformers"
