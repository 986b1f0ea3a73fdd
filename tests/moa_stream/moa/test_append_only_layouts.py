"""The append-only layouts on the real default model: no banned token, every intake extends the context by
exactly its tokens and computes only them, and `interleaved` reads on after an early EOS."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from moa_stream import LAYOUT_MODES, MoA
from moa_stream.agent.slot import Chunk
from moa_stream.moa.layouts import (
    LAYOUTS,
    Answer,
    BlocksLayout,
    IncrementalLayout,
    InterleavedCuedLayout,
    InterleavedLayout,
    layout_class,
    layout_for,
    register_layout,
)
from tests.moa_stream.test_moa import LONG_QUESTION, small_config


@dataclass
class Intake:
    """What one intake did to the aggregator's sequence."""

    before: list[int]
    after: list[int]
    computed: int  # prefill tokens the engine computed for it
    appended: int  # tokens the layout appended (len(after) - len(before))
    after_eos: bool  # the step before it ended with an EOS
    answer: Answer  # the turn's answer (a live reference: it keeps growing)
    answer_tokens: int  # len(answer.ids) at the intake


@dataclass
class Log:
    """The intakes of every probed turn."""

    intakes: list[Intake] = field(default_factory=list)


def probe(base: type[IncrementalLayout]) -> type[IncrementalLayout]:
    """A registered subclass of `base` that records each intake's effect on the engine's sequence."""

    class Probe(base):  # type: ignore[valid-type, misc]
        name = f"{base.name}-probe"
        log: ClassVar[Log] = Log()

        async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
            """The real intake, measured."""
            eng, seq = self.agg.engine, self.agg.seq
            assert seq is not None
            before, st0, eos = eng.tokens(seq), eng.seq_stats(seq), self.agg.after_eos
            await super().intake(chunks, texts, answer)
            after, st1 = eng.tokens(seq), eng.seq_stats(seq)
            self.log.intakes.append(Intake(before, after, st1.prefill_computed - st0.prefill_computed,
                                           len(after) - len(before), eos, answer, len(answer.ids)))

    Probe.__name__ = f"{base.__name__}Probe"
    return register_layout(Probe)


@pytest.fixture
def probes() -> Iterator[dict[str, type[IncrementalLayout]]]:
    """Probed blocks, interleaved and interleaved-cued layouts, unregistered afterwards."""
    made = {cls.name: probe(cls) for cls in (BlocksLayout, InterleavedLayout, InterleavedCuedLayout)}
    yield made
    for cls in made.values():
        del LAYOUTS[cls.name]


def test_every_layout_is_selectable_by_name_and_none_bans_a_token(engine) -> None:
    """`staircase` selects the measured default; no layout has a way to ban tokens from the aggregator."""
    assert {"blocks", "interleaved", "staircase"} <= set(LAYOUT_MODES)
    assert layout_class("blocks") is BlocksLayout and layout_class("interleaved") is InterleavedLayout
    assert layout_for("staircase", engine) in (BlocksLayout, InterleavedLayout)  # the transformers engine's
    assert all(not hasattr(layout_class(m), "banned") for m in LAYOUT_MODES)


# interleaved-cued ends its answer at an EOS, and the 135M model writes one after a couple of intakes.
@pytest.mark.parametrize(("mode", "min_intakes"), [("blocks", 3), ("interleaved", 3), ("interleaved-cued", 1)])
async def test_each_intake_extends_the_context_exactly_and_computes_only_its_tokens(engine, probes, mode,
                                                                                    min_intakes) -> None:
    """Append-only: the context before an intake is a prefix of the one after, and the engine computed Δ."""
    cls = probes[mode]
    moa = MoA.from_config(small_config(), engines={"default": engine})
    result = await moa.run(LONG_QUESTION, mode=cls.name)
    assert result.answer
    intakes = cls.log.intakes
    assert len(intakes) >= min_intakes
    for it in intakes:
        assert it.after[:len(it.before)] == it.before
        assert it.appended > 0 and it.computed == it.appended
    agg = result.metrics.agents["aggregator"]
    assert agg.prefill_computed + agg.prefill_reused + agg.decode_tokens <= agg.context_tokens
    assert engine.stats().sequences_open == 0


def test_a_staircase_answer_can_hold_a_bracket(engine) -> None:
    """Nothing is banned from the aggregator's sampling and a Python list passes every layout's text filter.

    (SmolLM2-135M, asked for a Python list in staircase mode, writes prose rather than a list, so the test
    checks the two places that used to stop '[': the sampling params and the answer's filter.)"""
    cfg = small_config()
    moa = MoA.from_config(cfg, engines={"default": engine})
    _, agg = moa._slots()
    params = agg.sampling(16)
    assert params.banned_token_ids == ()
    for mode in LAYOUT_MODES:
        layout = layout_class(mode)(agg, None)  # type: ignore[arg-type]
        text = "fruits = [\"apple\", \"pear\"]  # see [1]"
        shown, hit = layout.filter.push(text)
        assert not hit and shown + layout.filter.flush() == text, mode


async def test_interleaved_reads_the_chunks_left_after_an_early_eos_and_goes_on(engine, probes) -> None:
    """An EOS ends only the aggregator's turn: chunks still to come are read in a user turn and it continues.

    Proposer pacing is off here: it holds proposers at one unread chunk, so on the tiny model the terse answer's
    EOS no longer comes while chunks are still due, and the mechanism under test would not be reached."""
    cls = probes["interleaved"]
    cfg = small_config(proposer_tokens=48, answer_tokens=96, read_every_proposal=True, proposer_lead_chunks=None)
    terse = cfg.aggregator.model_copy(update={"system_prompt": "Answer in at most five words."})
    moa = MoA.from_config(cfg.model_copy(update={"aggregator": terse}), engines={"default": engine})
    result = await moa.run("What colour is the sky?", mode=cls.name)
    after_eos = [it for it in cls.log.intakes if it.after_eos]
    assert after_eos, "the terse aggregator should end a turn before the proposals are over"
    first = after_eos[0]
    eos_ids = engine.eos_token_ids
    assert first.before[-1] in eos_ids  # the turn ended with the EOS, and the intake came after it
    assert len(first.answer.ids) > first.answer_tokens  # and the aggregator wrote again after the intake
    assert result.answer


async def test_interleaved_cued_intake_anchors_each_chunk_and_ends_on_the_resume_line(engine, probes) -> None:
    """Each later chunk follows the last words read of its proposal, and the intake turn says to go on."""
    cls = probes["interleaved-cued"]
    moa = MoA.from_config(small_config(), engines={"default": engine})
    await moa.run(LONG_QUESTION, mode=cls.name)
    assert cls.log.intakes
    for it in cls.log.intakes:
        text = engine.tokenizer.decode(it.after[len(it.before):])
        assert 'continued after "...' in text
        assert "Go on with your answer from exactly where it stopped." in text
