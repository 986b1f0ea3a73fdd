"""The chat's turn view fed with real MoA events (real default model): panels, status line, saved prefill."""

from __future__ import annotations

import io

from rich.console import Console

from moa_stream import MoA, MoAConfig
from moa_stream.cli.turn_view import PlainView, TurnView, status_text


def tiny_config() -> MoAConfig:
    cfg = MoAConfig.default(proposers=2, max_tokens=12)
    return cfg.model_copy(update={
        "aggregator": cfg.aggregator.model_copy(update={"max_tokens": 8}),
        "staircase": cfg.staircase.model_copy(update={"first_chunk_tokens": 4, "chunk_tokens": 4,
                                                      "aggregator_tokens_per_intake": 4}),
    })


async def test_turn_view_renders_panels_answer_and_status(engine):
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    agents = [(a.name, 0) for a in moa.config.layers[0]]
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
    for name, _ in agents:
        assert name in text
        assert view.proposals[name].text.split()[0] in text  # the panel shows the proposal's words
    assert "answer" in text and view.answer.split()[0] in text
    assert status_text(view.metrics) in text and "| TTFT " in text
    assert plain_out.getvalue() == view.answer + "\n"
    assert "[TTFT " in plain_err.getvalue() and "chunks ingested" in plain_err.getvalue()

    view.show_proposers = False
    hidden = Console(record=True, width=120, file=io.StringIO())
    hidden.print(view)
    assert agents[0][0] not in hidden.export_text()


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
