"""The tool-using agent: one sequence across steps (Δ appends), error results that never stop it, valid calls."""

from __future__ import annotations

import time

import pytest

from engine import SamplingParams, StructuralTag
from engine.transformers_engine import TransformersEngine
from eval.bfcl.traces import load_cases, replay
from moa_stream import ChunkIngested, ConfigError, Done, FirstToken, MoA, MoAConfig, ProposerDelta
from moa_stream.agent.agent import Agent
from moa_stream.agent.events import AgentDelta, AgentDone, StepDone
from moa_stream.tools import ForceTool, HermesFormat, Tool, ToolChoice, ToolResult, ToolSet, bfcl_tools
from moa_stream.tools.bfcl_classes import fresh_instances
from tests.conftest import count_model_positions, tiny_llama


@pytest.fixture
async def tiny_chat_engine() -> TransformersEngine:
    """A tiny random model over the default model's whole vocabulary (chat text encodes to any id)."""
    lm = tiny_llama(vocab=49152)
    eng = TransformersEngine(lm, block_size=4, kv_cache_bytes=64 << 20)
    yield eng
    await eng.shutdown()


async def events_of(stream) -> list:
    """Every event of one run."""
    return [ev async for ev in stream]


def done_of(events: list) -> AgentDone:
    """The run's AgentDone (always last)."""
    assert isinstance(events[-1], AgentDone)
    return events[-1]


def echo(text: str) -> str:
    """Return the text."""
    return text


async def test_a_tool_result_append_computes_exactly_its_tokens(tiny_chat_engine):
    eng = tiny_chat_engine
    agent = Agent(eng, ToolSet([Tool.from_function(echo)]), sampling=SamplingParams(max_tokens=6), constrained=False)
    first = done_of(await events_of(agent.run("Say something.")))
    assert first.metrics.steps[0].prefill_computed == agent.slot.prompt_tokens, "a new conversation: its prompt"
    seq = agent.slot.seq
    before = len(eng.tokens(seq))
    results = [ToolResult("call_x", "echo", '{"text": "a result with some words in it"}')]
    delta = agent.slot.fmt.next_turn(agent.format.render_results(results), agent.slot.after_eos)
    with count_model_positions(eng) as fed:
        events = await events_of(agent.submit(results))
    step = done_of(events).metrics.steps[0]
    assert agent.slot.seq == seq, "the same sequence goes on"
    assert eng.tokens(seq)[before:before + len(delta)] == delta, "the results turn is appended after the reply"
    assert step.prefill_computed == len(delta) and step.prefill_reused == 0, "only the new tokens are computed"
    # Counted at the model: every position it computed is the Δ or a decoded token, as the engine reports.
    assert fed.count == step.prefill_computed + step.decode_tokens
    # The next user turn costs its tokens only too.
    after = len(eng.tokens(seq))
    turn = done_of(await events_of(agent.send("And now?")))
    appended = len(eng.tokens(seq)) - after - turn.metrics.decode_tokens
    assert turn.metrics.steps[0].prefill_computed == appended and agent.history[-2].content == "And now?"


def boom(x: bool) -> int:
    """Always fails."""
    raise RuntimeError("kaboom")


def hang(x: bool) -> bool:
    """Takes far too long."""
    time.sleep(30)
    return x


@pytest.mark.parametrize("tool, says", [(boom, "kaboom"), (hang, "timed out")])
async def test_a_raising_or_hanging_tool_gives_an_error_result_and_the_agent_goes_on(tiny_chat_engine, tool, says):
    # Constrained decoding makes even a random model write the forced call (boolean arguments: a greedy random
    # model never ends an integer's digits).
    agent = Agent(tiny_chat_engine, ToolSet([Tool.from_function(tool)]), tool_choice=ForceTool(tool.__name__),
                  sampling=SamplingParams(max_tokens=48), max_steps=2, tool_timeout=0.5)
    t0 = time.perf_counter()
    events = await events_of(agent.run(f"Call {tool.__name__} with x=true."))
    done = done_of(events)
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(done.metrics.steps) == 2, "after the error result the agent takes its next step"
    assert results and all(says in (r.error or "") for r in results if r.name == tool.__name__)
    assert done.metrics.finish == "max_steps" and done.metrics.tool_errors == len(results)
    assert time.perf_counter() - t0 < 120
    assert agent.slot.seq is not None and agent.history[-1].role == "assistant", "the conversation stays usable"


class StaleFormat(HermesFormat):
    """A call format that still offers a tool the agent no longer has (as a model trained on old tools would)."""

    name = "stale-test"

    def structured(self, tools: ToolSet, choice: ToolChoice = "auto", parallel: bool = True) -> StructuralTag | None:
        ghost = Tool.from_openai({"name": "launch_rocket", "parameters": {"type": "object", "properties": {}}})
        return super().structured(tools | ToolSet([ghost]), ForceTool("launch_rocket"), parallel)


async def test_an_unknown_tool_gives_an_error_result_and_the_agent_goes_on(tiny_chat_engine):
    agent = Agent(tiny_chat_engine, ToolSet([Tool.from_function(echo)]), call_format=StaleFormat(), max_steps=2,
                  sampling=SamplingParams(max_tokens=48))
    events = await events_of(agent.run("Launch the rocket."))
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results and all("unknown tool 'launch_rocket'" in (r.error or "") for r in results)
    assert "echo" in results[0].error, "the error names the tools there are"
    assert len([e for e in events if isinstance(e, StepDone)]) == 2, "the agent took its next step"


async def test_constrained_default_model_writes_a_parseable_call_on_every_step_of_a_bfcl_trace(engine):
    case = load_cases("base", limit=1)[0]
    trace = replay(case)
    used = {s.call.name for s in trace.steps}
    # The functions the trace calls (a short prompt keeps this test quick on a CPU); bound to BFCL's instances.
    full = bfcl_tools(case, fresh_instances(case))
    tools = ToolSet([t for t in full if t.name in used])
    steps = min(3, len(trace.steps))
    agent = Agent(engine, tools, tool_choice="required", max_steps=steps, sampling=SamplingParams(max_tokens=96))
    try:
        events = await events_of(agent.run(case.turns[0]))
    finally:
        await agent.aclose()  # the session's shared engine must end every test with no sequence open
    done = done_of(events)
    assert len(done.metrics.steps) == steps
    for step in done.metrics.steps:
        assert step.calls >= 1, f"step {step.step} wrote no call"
    parse_errors = [r for r in done.results if r.error and ("JSON" in r.error or "a call must" in r.error)]
    assert not parse_errors, parse_errors
    assert all(c.name in used for c in done.calls)
    assert any(isinstance(e, AgentDelta) and "<tool_call>" in e.text for e in events) or done.calls


def lucky_number() -> int:
    """Today's lucky number."""
    return 84


async def test_a_tool_using_proposer_streams_its_calls_into_the_staircase(tiny_chat_engine):
    cfg = MoAConfig.parse({
        "mode": "staircase",
        "layers": [[
            {"name": "calc", "system_prompt": "Use the tools.", "temperature": 0.0, "max_tokens": 64,
             "tools": ["tests.moa_stream.agent.test_agent:lucky_number"], "tool_choice": "required",
             "max_tool_steps": 2},
            {"name": "plain", "system_prompt": "Answer concisely.", "temperature": 0.0, "max_tokens": 12},
        ]],
        # An answer long enough to outlast the proposer's two steps (a proposer still writing when the answer is
        # over is stopped, and this test reads its second step).
        "aggregator": {"name": "aggregator", "temperature": 0.0, "max_tokens": 96, "ignore_eos": True},
        "staircase": {"agent_timeout_s": 600, "first_chunk_tokens": 4, "chunk_tokens": 4,
                      "aggregator_tokens_per_intake": 4},
    })
    moa = MoA(cfg, {"default": tiny_chat_engine})
    events = [ev async for ev in moa.stream("What is the lucky number today?")]
    calc_text = "".join(e.text for e in events if isinstance(e, ProposerDelta) and e.agent == "calc")
    assert "[called lucky_number({}) -> 84]" in calc_text, "calls reach the aggregator in compact form"
    assert "<tool_call>" not in calc_text
    first = next(e for e in events if isinstance(e, FirstToken))
    calc_last = [e.t for e in events if isinstance(e, ProposerDelta) and e.agent == "calc"][-1]
    assert first.ttft_s < calc_last, "the aggregator starts while the tool proposer is still working"
    assert any(isinstance(e, ChunkIngested) and e.agent == "calc" for e in events)
    done = events[-1]
    assert isinstance(done, Done) and done.metrics.agents["calc"].error is None
    # The proposer's tool loop appended its result to its own sequence: computed past its prompt, no re-prefill.
    calc = done.metrics.agents["calc"]
    assert calc.prompt_tokens < calc.prefill_computed < 2 * calc.prompt_tokens
    with pytest.raises(ConfigError, match="only proposers may have tools"):
        MoAConfig.parse({"layers": [[{"name": "a"}]], "aggregator": {"name": "b", "tools": ["bfcl:MathAPI"]}})


@pytest.mark.parametrize("pin_ttl, evicted", [(60.0, False), (1e-6, True)])
async def test_the_sequence_is_pinned_while_tools_run(pin_ttl, evicted):
    """A tool that needs KV room while it runs: the pinned agent keeps its sequence (the tool's open waits for
    the pin, which its own run holds up, for the engine's pin_wait_s, then gets the CapacityError); with its pin
    expired, the agent's sequence is evicted and its next step recomputes it transparently."""
    lm = tiny_llama(vocab=49152)
    cfg = lm.model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    # fp32 K and V: ~400 tokens
    eng = TransformersEngine(lm, block_size=4, kv_cache_bytes=per_token * 400, pin_wait_s=0.5)

    async def crowd() -> str:
        """Fill the KV cache."""
        other = await eng.open(list(range(300, 560)))  # 260 tokens: with the agent's ~250, more than 400
        await eng.close(other)
        return "crowded"

    try:
        agent = Agent(eng, ToolSet([Tool.from_function(crowd)]), tool_choice=ForceTool("crowd"),
                      later_tool_choice="none", sampling=SamplingParams(max_tokens=40), max_steps=2, pin_ttl=pin_ttl)
        done = done_of(await events_of(agent.run("Crowd the cache.")))
        result = done.results[0]
        step1 = done.metrics.steps[1]
        if evicted:
            assert result.result == "crowded" and eng.stats().evictions >= 1
            assert eng.seq_stats(agent.slot.seq).recomputed_after_eviction > 0, "recomputed transparently"
        else:
            assert "CapacityError" in (result.error or ""), "the pinned sequence was not evicted for the tool"
            assert eng.stats().evictions == 0 and eng.seq_stats(agent.slot.seq).recomputed_after_eviction == 0
            assert step1.prefill_computed < 150, "only the result turn (the error) was computed, not the ~250 before"
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- speculative tool calls

RAN: list[str] = []


def lookup(flag: bool) -> str:
    """Look a flag up (no side effects: a pure tool)."""
    RAN.append(f"lookup:{flag}")
    return f"value of {flag}"


def store(flag: bool) -> str:
    """Store a flag (a side effect: never run early)."""
    RAN.append(f"store:{flag}")
    return "stored"


async def test_speculative_starts_are_taken_on_an_exact_match_and_impure_tools_never_start(tiny_chat_engine):
    """A pure call starts as soon as its streamed text parses (streaming start) or when the step begins from the
    history of a repeated workflow (predicted start); either is taken only on an exact match and the tool runs
    once. A wrong guess is cancelled and never reaches the context; an impure tool never starts early."""
    from moa_stream.agent.tool_speculation import HistoryPredictor

    predictor = HistoryPredictor()
    tools = ToolSet([Tool.from_function(lookup, pure=True), Tool.from_function(store)])

    def agent(tool: str, stream_start: bool) -> Agent:
        return Agent(tiny_chat_engine, tools, tool_choice=ForceTool(tool), later_tool_choice="none", max_steps=2,
                     sampling=SamplingParams(max_tokens=48), speculate=stream_start, speculator=predictor)

    RAN.clear()
    streamed = done_of(await events_of(agent("lookup", stream_start=True).run("Look up a flag.")))
    assert streamed.results[0].ok and streamed.results[0].speculated and len(RAN) == 1
    predicted = done_of(await events_of(agent("lookup", stream_start=False).run("Look up a flag.")))
    assert predicted.results[0].speculated and predicted.results[0].result == streamed.results[0].result
    assert predicted.metrics.speculations_taken == 1 and RAN == [RAN[0], RAN[0]], "each run ran the tool once"
    # The predictor guesses lookup again, but the model must call store: the guess is cancelled, never appended.
    RAN.clear()
    wrong = agent("store", stream_start=True)
    done = done_of(await events_of(wrong.run("Store a flag.")))
    assert not any(r.speculated for r in done.results) and done.metrics.speculations_taken == 0
    assert done.metrics.speculations_started == 1, "only the pure guess started early, not the impure call"
    assert "value of" not in wrong.engine.tokenizer.decode(wrong.engine.tokens(wrong.slot.seq))
    assert [name for name in RAN if name.startswith("store")] == [f"store:{done.calls[0].arguments['flag']}"]


async def test_a_draft_agent_guesses_each_step_on_a_fork_and_never_touches_the_agents_sequence(tiny_chat_engine):
    """The draft (same model, greedy, a short budget, the step's grammar) guesses the call on a fork of the
    agent's sequence: a right guess is taken (alpha counted), the agent's sequence and its computed tokens are
    those of a run without drafting, every fork is closed, and an impure tool is never started early."""
    from moa_stream.agent.draft_speculator import DraftSpeculator

    eng = tiny_chat_engine
    tools = ToolSet([Tool.from_function(lookup, pure=True), Tool.from_function(store)])

    async def run(tool: str, draft: DraftSpeculator | None) -> tuple[AgentDone, list[int]]:
        agent = Agent(eng, tools, tool_choice=ForceTool(tool), later_tool_choice="none", max_steps=2,
                      sampling=SamplingParams(max_tokens=48), speculator=draft)
        done = done_of(await events_of(agent.run("Look up a flag.")))
        tokens = eng.tokens(agent.slot.seq)
        await agent.aclose()
        return done, tokens

    RAN.clear()
    plain, plain_tokens = await run("lookup", None)
    draft = DraftSpeculator(max_tokens=48)
    drafted, drafted_tokens = await run("lookup", draft)
    assert drafted_tokens == plain_tokens, "drafting appended nothing to the agent's sequence"
    # The same tokens reached the agent's sequence (the second run's prompt is partly a prefix-cache hit) and
    # step 1 computed just its Δ, as without drafting.
    assert [(s.prefill_computed + s.prefill_reused, s.decode_tokens) for s in drafted.metrics.steps] == \
        [(s.prefill_computed + s.prefill_reused, s.decode_tokens) for s in plain.metrics.steps]
    assert drafted.metrics.steps[1].prefill_computed == plain.metrics.steps[1].prefill_computed
    assert drafted.results[0].speculated and drafted.results[0].result == plain.results[0].result
    assert drafted.metrics.speculations_started == drafted.metrics.speculations_taken == 1  # alpha = 1
    assert draft.stats.drafts == 1 and draft.stats.guessed == 1, "step 1 (tool_choice none) offers no tools"
    assert RAN == [RAN[0], RAN[0]], "each run ran the tool once"
    assert eng.stats().sequences_open == 0, "every fork was closed"
    RAN.clear()
    impure, _ = await run("store", draft)
    assert draft.stats.guessed == 2, "the draft guessed store"
    assert impure.metrics.speculations_started == 0 and not impure.results[0].speculated
    assert RAN == [f"store:{impure.calls[0].arguments['flag']}"], "store ran once, when the model asked"


async def test_a_wrong_draft_is_cancelled_and_its_result_never_appended(tiny_chat_engine):
    """A draft on another engine (another random model) guesses another call than the agent writes: the
    guess is started, cancelled, and its result reaches no context."""
    from moa_stream.agent.draft_speculator import DraftSpeculator

    other = TransformersEngine(tiny_llama(seed=4, vocab=49152), block_size=4, kv_cache_bytes=64 << 20)
    try:
        tools = ToolSet([Tool.from_function(lookup, pure=True)])
        draft = DraftSpeculator(other, max_tokens=48)
        agent = Agent(tiny_chat_engine, tools, tool_choice=ForceTool("lookup"), later_tool_choice="none",
                      max_steps=2, sampling=SamplingParams(max_tokens=48), speculator=draft)
        RAN.clear()
        done = done_of(await events_of(agent.run("Look up a flag.")))
        assert draft.stats.guessed == 1 and done.metrics.speculations_started == 1
        flag = done.calls[0].arguments["flag"]
        assert RAN[0] == f"lookup:{not flag}", "the draft guessed the other flag (this pair of models does)"
        assert done.metrics.speculations_taken == 0 and not done.results[0].speculated
        assert done.results[0].result == f"value of {flag}"
        context = tiny_chat_engine.tokenizer.decode(tiny_chat_engine.tokens(agent.slot.seq))
        assert f"value of {not flag}" not in context
        await agent.aclose()
        assert other.stats().sequences_open == 0
    finally:
        await other.shutdown()


async def test_speculation_is_turned_on_in_a_proposers_config(tiny_chat_engine):
    """`speculation:` in an agent's config builds its speculator (a draft on its own backend, or history) and the
    streaming start; a draft backend that is not defined is an error naming it."""
    from moa_stream.agent.context import ChatFormat
    from moa_stream.agent.draft_speculator import DraftSpeculator
    from moa_stream.agent.proposer import tool_agent
    from moa_stream.agent.slot import AgentSlot
    from moa_stream.agent.tool_speculation import HistoryPredictor

    def proposer(speculation: dict) -> dict:
        return {"name": "calc", "temperature": 0.0, "max_tokens": 64, "tool_choice": "required",
                "tools": ["tests.moa_stream.agent.test_agent:lucky_number"], "speculation": speculation}

    cfg = MoAConfig.parse({"layers": [[proposer({"predict": "draft", "draft_max_tokens": 24, "stream_start": True})]],
                           "aggregator": {"name": "aggregator"}})
    slot = AgentSlot(cfg=cfg.layers[0][0], engine=tiny_chat_engine, fmt=ChatFormat(tiny_chat_engine.tokenizer))
    agent = tool_agent(slot)
    assert isinstance(agent.speculator, DraftSpeculator) and agent.speculator.max_tokens == 24 and agent.speculate
    done = done_of(await events_of(agent.run("What is the lucky number today?")))
    assert done.results[0].result == "84" and agent.speculator.stats.drafts >= 1
    await agent.aclose()
    history = MoAConfig.parse({"layers": [[proposer({"predict": "history"})]], "aggregator": {"name": "aggregator"}})
    slot = AgentSlot(cfg=history.layers[0][0], engine=tiny_chat_engine, fmt=ChatFormat(tiny_chat_engine.tokenizer))
    assert isinstance(tool_agent(slot).speculator, HistoryPredictor) and not tool_agent(slot).speculate
    with pytest.raises(ConfigError, match="'calc' uses backend 'small'"):
        MoAConfig.parse({"layers": [[proposer({"predict": "draft", "draft_backend": "small"})]],
                         "aggregator": {"name": "aggregator"}})
    # A draft on another backend: the MoA hands that backend's engine to the proposer's draft.
    other = MoAConfig.parse({"backends": {"default": {}, "small": {}},
                             "layers": [[proposer({"predict": "draft", "draft_backend": "small"})]],
                             "aggregator": {"name": "aggregator"}})
    draft_engine = object()
    moa = MoA(other, {"default": tiny_chat_engine, "small": draft_engine})  # type: ignore[dict-item]
    (calc,), _ = moa._slots()[0][0], None
    assert calc.draft_engine is draft_engine and tool_agent(calc).speculator.engine is draft_engine
