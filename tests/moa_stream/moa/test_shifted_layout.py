"""The `shifted` layout on the real default model (SmolLM2 GGUF on the llama.cpp engine): each intake inserts its
chunks where their proposals' text ends and computes exactly those tokens; the aggregator reads the re-prefill
layout's text order (references, question, answer); the `staircase` alias falls back where KV cannot move; with
start_policy at_once the answer begins on the question alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from moa_stream import ChunkIngested, Done, FirstToken, MoA, ProposerDelta
from moa_stream.agent.slot import Chunk
from moa_stream.errors import ConfigError
from moa_stream.moa.layouts import LAYOUTS, Answer, InterleavedLayout, ShiftedLayout, layout_for, register_layout
from tests.moa_stream.test_moa import LONG_QUESTION, small_config


@dataclass
class Intake:
    """What one intake did to the aggregator's sequence."""

    grown: int  # tokens the sequence gained
    computed: int  # prefill tokens the engine computed for it


@dataclass
class Log:
    intakes: list[Intake] = field(default_factory=list)
    last_tokens: list[int] = field(default_factory=list)  # the aggregator's sequence after the last intake
    texts: list[str] = field(default_factory=list)  # every proposal's text at the last intake


class ShiftedProbe(ShiftedLayout):
    """The shifted layout, each intake measured at the engine."""

    name = "shifted-probe"
    log: ClassVar[Log] = Log()

    async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
        eng, seq = self.agg.engine, self.agg.seq
        assert seq is not None
        n0, st0 = len(eng.tokens(seq)), eng.seq_stats(seq)
        await super().intake(chunks, texts, answer)
        st1 = eng.seq_stats(seq)
        self.log.intakes.append(Intake(len(eng.tokens(seq)) - n0, st1.prefill_computed - st0.prefill_computed))
        self.log.last_tokens, self.log.texts = eng.tokens(seq), list(texts)


@pytest.fixture(scope="module")
async def llama() -> Any:
    """The shipped GGUF on the llama.cpp engine."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    e = LlamaCppEngine(kv_cells=4096, n_seq_max=16)
    yield e
    await e.shutdown()


@pytest.fixture
def probe() -> Iterator[type[ShiftedProbe]]:
    ShiftedProbe.log = Log()
    register_layout(ShiftedProbe)
    yield ShiftedProbe
    del LAYOUTS[ShiftedProbe.name]


async def test_each_intake_computes_only_its_chunks_and_the_prompt_reads_in_reprefill_order(llama, probe) -> None:
    moa = MoA.from_config(small_config(proposer_tokens=32, answer_tokens=24, read_every_proposal=True),
                          engines={"default": llama})
    result = await moa.run(LONG_QUESTION, mode=probe.name)
    assert result.answer
    log = probe.log
    assert len(log.intakes) >= 3
    for it in log.intakes:
        assert it.grown > 0 and it.computed == it.grown  # the answer after the chunks was moved, not recomputed
    text = llama.tokenizer.decode(log.last_tokens)
    # Every proposal's text read so far stands whole, in its own numbered reference, before the question.
    question_at = text.index(LONG_QUESTION)
    for p, t in enumerate(log.texts):
        if t.strip():
            at = text.index(f"{p + 1}. {t.strip()[:40]}")
            assert at < question_at
    assert llama.stats().sequences_open == 0


async def test_staircase_falls_back_where_kv_cannot_move_and_shifted_says_why(engine, llama) -> None:
    """`staircase` names the measured default where it runs and the append-only fallback elsewhere."""
    assert layout_for("staircase", llama) is LAYOUTS["staircase"]
    assert layout_for("staircase", engine) is InterleavedLayout
    assert layout_for("shifted", engine) is ShiftedLayout
    moa = MoA.from_config(small_config(), engines={"default": engine})
    with pytest.raises(ConfigError, match="can move cached positions"):
        await moa.run("What colour is the sky?", mode="shifted")
    assert engine.stats().sequences_open == 0


async def test_at_once_answers_before_any_proposer_opens_and_reads_every_chunk_after(llama) -> None:
    """start_policy at_once: the first token is computed with only the aggregator's sequence open (no proposer
    prompt shares its passes), and the chunks that come later are inserted before the answer as usual."""
    cfg = small_config(proposer_tokens=24, answer_tokens=24, start_policy="at_once")
    cfg = cfg.model_copy(update={"aggregator": cfg.aggregator.model_copy(update={"ignore_eos": True})})
    moa = MoA.from_config(cfg, engines={"default": llama})
    open_at_first_token: int | None = None
    order: list[str] = []
    done = None
    async for ev in moa.stream(LONG_QUESTION, mode="shifted"):
        if isinstance(ev, FirstToken):
            open_at_first_token = llama.stats().sequences_open
        if isinstance(ev, FirstToken | ProposerDelta | ChunkIngested):
            order.append(type(ev).__name__)
        if isinstance(ev, Done):
            done = ev
    assert open_at_first_token == 1  # the aggregator's, alone
    assert order[0] == "FirstToken" and "ProposerDelta" in order
    assert done is not None and done.metrics.answer_tokens == 24
    assert done.metrics.chunks_ingested > 0  # proposals read after the answer began
    assert llama.stats().sequences_open == 0
