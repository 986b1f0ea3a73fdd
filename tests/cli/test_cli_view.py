"""The chat's turn view fed with real MoA events (real default model): panels, status line, saved prefill."""

from __future__ import annotations

import io

from rich.console import Console

from moa_stream import MoA, MoAConfig
from moa_stream.cli.turn_view import PlainView, TurnView, panel_agents, status_text


def tiny_config() -> MoAConfig:
    cfg = MoAConfig.default(proposers=2, max_tokens=12)
    return cfg.model_copy(update={
        "aggregator": cfg.aggregator.model_copy(update={"max_tokens": 8}),
        "staircase": cfg.staircase.model_copy(update={"first_chunk_tokens": 4, "chunk_tokens": 4,
                                                      "aggregator_tokens_per_intake": 4}),
    })


async def test_turn_view_renders_panels_answer_and_status(engine):
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    agents = panel_agents(moa.config)
    view = TurnView(mode="staircase", agents=agents)
    plain_out, plain_err = io.StringIO(), io.StringIO()
    plain = PlainView(plain_out, plain_err)
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=True)
    async for ev in moa.stream("Why is the sky blue?", mode="staircase"):
        view.apply(ev)
        plain.apply(ev)
        console.print(view)  # every intermediate frame renders
    assert view.metrics is not None and view.metrics.ttft_s is not None
    frame = Console(record=True, width=200, file=io.StringIO())
    frame.print(view)
    text = frame.export_text()
    for a in agents:
        assert a.name in text
        assert view.proposals[a.name].text.split()[0] in text  # the panel shows the proposal's words
    assert "answer" in text and view.answer.split()[0] in text
    assert status_text(view.metrics) in text and "| TTFT " in text
    assert plain_out.getvalue() == view.answer + "\n"
    assert "[TTFT " in plain_err.getvalue() and "chunks ingested" in plain_err.getvalue()

    view.show_proposers = False
    hidden = Console(record=True, width=120, file=io.StringIO())
    hidden.print(view)
    assert agents[0].name not in hidden.export_text()


async def test_prefill_saved_counts_an_earlier_turn_kept_live(engine):
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    conv = moa.conversation(mode="staircase")
    try:
        first = await conv.send("Name a primary color.")
        second = await conv.send("And another one?")
    finally:
        await conv.close()
    # Turn 2 extends every agent's live sequence: all of turn 1's context is reused, not recomputed.
    carried = sum(a.context_tokens for a in first.metrics.agents.values())
    assert second.metrics.prefill_saved >= carried - len(first.metrics.agents)
    assert first.metrics.prefill_saved < second.metrics.prefill_saved
    assert engine.stats().sequences_open == 0


async def test_heterogeneous_panels_name_each_agents_model(engine, default_model_path):
    """Two engines on two model files (the HF conversion and the shipped GGUF, llama.cpp): each panel says which."""
    from engine.models import default_gguf_path
    from moa_stream.backends import build_engines
    from moa_stream.config import LlamaCppBackend, TransformersBackend

    gguf = str(default_gguf_path())
    cfg = tiny_config()
    cfg = cfg.model_copy(update={
        "backends": {"default": TransformersBackend(), "gguf": LlamaCppBackend(model=gguf, kv_cells=1024)},
        "layers": [[cfg.layers[0][0], cfg.layers[0][1].model_copy(update={"backend": "gguf"})]],
    })
    gguf_engines = build_engines({"gguf": cfg.backends["gguf"]})
    try:
        moa = MoA.from_config(cfg, engines={"default": engine, **gguf_engines})
        agents = panel_agents(cfg)
        assert [a.model for a in agents] == ["smollm2-135m", "SmolLM2-135M-Instruct.Q4_1"]
        view = TurnView(mode="staircase", agents=agents, aggregator_model=cfg.model_label(cfg.aggregator))
        async for ev in moa.stream("Why is the sky blue?", mode="staircase"):
            view.apply(ev)
        frame = Console(record=True, width=200, file=io.StringIO())
        frame.print(view)
        text = frame.export_text()
        assert all(view.proposals[a.name].text for a in agents)  # both engines wrote
        assert f"{agents[0].name} · smollm2-135m" in text
        assert f"{agents[1].name} · SmolLM2-135M-Instruct.Q4_1" in text
        assert "answer · smollm2-135m" in text
    finally:
        for eng in gguf_engines.values():
            await eng.shutdown()

    one_model = TurnView(mode="staircase", agents=panel_agents(tiny_config()), aggregator_model="smollm2-135m")
    frame = Console(record=True, width=200, file=io.StringIO())
    frame.print(one_model)
    assert "·" not in frame.export_text()  # one model: titles stay bare names


def test_shipped_heterogeneous_example_spreads_agents_over_three_models():
    from pathlib import Path

    import moa_stream

    cfg = MoAConfig.load(Path(moa_stream.__file__).parent / "examples" / "heterogeneous.yaml")
    labels = {a.name: cfg.model_label(a) for a in cfg.agents()}
    assert labels == {"analyst": "qwen2.5-coder-0.5b", "explainer": "qwen2.5-coder-1.5b",
                      "skeptic": "smollm2-135m", "aggregator": "qwen2.5-coder-1.5b"}


async def test_debate_panels_show_each_round_in_a_row(engine):
    """`chat --mode debate`'s view: a row of panels per round, each filled by that round's text."""
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    agents = panel_agents(moa.config, "debate")
    assert [(a.name, a.layer) for a in agents] == [("analyst", 0), ("explainer", 0), ("analyst@2", 1),
                                                   ("explainer@2", 1)]
    view = TurnView(mode="debate", agents=agents)
    async for ev in moa.stream("Why is the sky blue?", mode="debate"):
        view.apply(ev)
    assert view.metrics is not None and view.metrics.mode == "debate"
    frame = Console(record=True, width=200, file=io.StringIO())
    frame.print(view)
    text = frame.export_text()
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "round 1 · analyst" in line)
    assert "round 1 · explainer" in lines[first]  # one row per round
    assert any("round 2 · analyst" in line and "round 2 · explainer" in line for line in lines[first + 1:])
    for a in agents:
        assert view.proposals[a.name].text.split()[0] in text
