"""L = 2 and 3 proposer layers, every one streaming: each later layer reads the one before it as it streams.

The tiny random model with the real vocabulary runs every agent (the transformers engine: the `interleaved` layout,
append-only). What the model computed is counted at its input embedding and must equal, over every sequence of the
turn, what the agents' counters say they computed; and every reader's context is each token read once: prefill
computed + reused + decoded = its context (but for a last sampled token nothing read), nothing re-read.
"""

from __future__ import annotations

import pytest

from engine.transformers_engine import TransformersEngine
from moa_stream import ChunkIngested, Done, MoA, MoAConfig, ProposerDelta
from tests.conftest import count_model_positions


def layered(depth: int, layer_modes: list[str] | None = None) -> MoAConfig:
    """`depth` layers of two greedy proposers; layer 0 writes 24 tokens past any EOS so that it streams long."""
    layers = [[{"name": f"l{d}p{i}", "temperature": 0.0, "max_tokens": 24 if d == 0 else 8, "ignore_eos": d == 0}
               for i in range(2)] for d in range(depth)]
    return MoAConfig.parse({
        "backends": {"default": {"kind": "transformers"}}, "layers": layers, "layer_modes": layer_modes,
        "aggregator": {"name": "aggregator", "temperature": 0.0, "max_tokens": 6}, "mode": "staircase",
        "staircase": {"first_chunk_tokens": 2, "chunk_tokens": 2, "aggregator_tokens_per_intake": 2,
                      "read_every_proposal": False}})


@pytest.mark.parametrize("depth", [2, 3])
async def test_every_layer_streams_and_each_append_is_its_delta(tiny: TransformersEngine, depth: int):
    moa = MoA(layered(depth), {"default": tiny})
    before = tiny.stats()
    with count_model_positions(tiny) as fed:
        events = [ev async for ev in moa.stream("Why is the sky blue?")]
    done = events[-1]
    assert isinstance(done, Done) and done.answer
    after = tiny.stats()
    # The model computed exactly what the counters say: every position once, none behind their back.
    assert fed.count == (after.prefill_computed - before.prefill_computed) + (after.decode_tokens
                                                                             - before.decode_tokens)
    readers = [a for a in done.metrics.agents.values() if a.role == "aggregator" or a.layer > 0]
    assert len(readers) == 2 * (depth - 1) + 1
    for a in readers:  # append-only: each token of the reader's context computed or reused once, never re-read
        unread = a.context_tokens - (a.prefill_computed + a.prefill_reused + a.decode_tokens)
        assert unread in (0, 1), a  # 1: its last sampled token, whose KV nothing needed
    for d in range(1, depth):
        for i in range(2):
            name = f"l{d}p{i}"
            read = [ev for ev in events if isinstance(ev, ChunkIngested) and ev.reader == name]
            assert read and {ev.layer for ev in read} == {d - 1}  # it read the layer before it, only that one
            first_word = next(k for k, ev in enumerate(events) if isinstance(ev, ProposerDelta) and ev.agent == name)
            # It started writing on layer d-1's first chunks and took in more while it wrote: a staircase.
            assert any(isinstance(ev, ChunkIngested) and ev.reader == name for ev in events[first_word:])
    last = [ev for ev in events if isinstance(ev, ChunkIngested) and ev.reader == "aggregator"]
    assert last and {ev.layer for ev in last} == {depth - 1}
    assert tiny.stats().sequences_open == 0


async def test_a_classic_layer_reads_the_whole_layer_before_it(tiny: TransformersEngine):
    moa = MoA(layered(2, layer_modes=["classic"]), {"default": tiny})
    events = [ev async for ev in moa.stream("Why is the sky blue?")]
    assert isinstance(events[-1], Done) and events[-1].answer
    for name in ("l1p0", "l1p1"):
        first_word = next(k for k, ev in enumerate(events) if isinstance(ev, ProposerDelta) and ev.agent == name)
        finals = [k for k, ev in enumerate(events) if isinstance(ev, ChunkIngested) and ev.reader == name and ev.final]
        assert len(finals) == 2 and max(finals) < first_word  # both layer-0 proposals were over before it wrote


def test_layer_modes_must_name_one_mode_per_later_layer():
    with pytest.raises(Exception, match="layer_modes has 2 modes"):
        layered(2, layer_modes=["classic", "classic"])
