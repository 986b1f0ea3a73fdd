"""SamplingParams.priority on both local engines: lower values are served first in every step, nothing starves.

Four generations run; the last to arrive may be urgent (priority 0, the others 1). Each test records the sequences
of every step the engine's scheduler returns, in batch order (counters, no clocks). On the transformers engine the
step budget (two tokens) holds only two of the four decodes, so the scheduler must leave some out; llama.cpp cannot
run fewer batch tokens than resident sequences (n_batch >= n_seq_max), so there every decode fits and priority
shows as the batch order, which is also the order in which prefill would take what the decodes leave.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine import InvalidSamplingError, SamplingParams, Sequence
from engine.transformers_engine import TransformersEngine
from tests.conftest import GUARD_S, tiny_llama

LATE_TOKENS, EARLY_TOKENS = 6, 12


def record_steps(eng: Any) -> list[list[int]]:
    """Wrap the engine's scheduler so that every step's sequence ids are recorded, in batch order."""
    steps: list[list[int]] = []
    scheduler = eng._scheduler
    schedule = scheduler.schedule

    def recorded() -> Any:
        step = schedule()
        if step.chunks:
            steps.append([c.seq.id for c in step.chunks])
        return step

    scheduler.schedule = recorded
    return steps


async def drain(stream: AsyncIterator[Any]) -> int:
    """Tokens a generation wrote."""
    n = 0
    async for delta in stream:
        n += len(delta.token_ids)
    return n


async def late_urgent_generation(eng: Any, late_priority: int) -> tuple[list[list[int]], int, list[int]]:
    """Three early generations of priority 1, then a fourth (arriving last) of `late_priority`.

    Returns the steps up to the fourth's last one, its sequence id and every generation's token count.
    """
    prompts = [[1 + (31 * i + 7 * j) % 400 for j in range(8)] for i in range(4)]  # ids the tiny model knows too
    seqs: list[Sequence] = [await eng.open(p) for p in prompts]
    # Another sequence's prefill (several steps) in between: the fourth's open is a turn long done, not the start of
    # the generation's (a generation right after its sequence's open would keep the open's place).
    await eng.close(await eng.open([400 + j for j in range(8)]))
    steps = record_steps(eng)
    early = SamplingParams(max_tokens=EARLY_TOKENS, ignore_eos=True, priority=1)
    streams = [eng.generate(s, early) for s in seqs[:3]]
    streams.append(eng.generate(seqs[3], SamplingParams(max_tokens=LATE_TOKENS, ignore_eos=True,
                                                        priority=late_priority)))
    counts = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams)), GUARD_S)
    late = seqs[3].id
    last = max(i for i, ids in enumerate(steps) if late in ids)
    return steps[:last + 1], late, list(counts)


@pytest.fixture(params=["llamacpp", "transformers"])
async def two_per_step(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """llama.cpp on the shipped GGUF (4 sequences, 4 tokens a step), transformers on a tiny model (2 a step)."""
    eng: Any
    if request.param == "llamacpp":
        pytest.importorskip("llama_cpp")
        from engine.llamacpp_engine import LlamaCppEngine

        eng = LlamaCppEngine(max_tokens_per_step=4, n_seq_max=4, kv_cells=1024)
    else:
        eng = TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20, max_tokens_per_step=2)
    yield eng
    await eng.shutdown()


async def test_a_priority_0_generation_is_served_first_in_every_step_and_the_others_still_finish(
        two_per_step: Any) -> None:
    steps, late, counts = await late_urgent_generation(two_per_step, late_priority=0)
    # From its first decode to its last token the urgent generation is in every step, first, though it arrived last.
    first = min(i for i, ids in enumerate(steps) if late in ids)
    assert all(ids[0] == late for ids in steps[first:])
    assert len(steps) - first >= LATE_TOKENS - 1  # one decode per token after the first (sampled from the prompt)
    # Lower priority waits, it is not starved: every generation wrote all it was asked for.
    assert counts == [EARLY_TOKENS] * 3 + [LATE_TOKENS]


async def test_at_equal_priority_the_last_arrival_comes_last(two_per_step: Any) -> None:
    """The control: by arrival alone the fourth generation is served after the others (left out where the budget is
    short), which is what priority 0 prevents."""
    steps, late, counts = await late_urgent_generation(two_per_step, late_priority=1)
    assert any(ids[0] != late for ids in steps if late in ids)
    if isinstance(two_per_step, TransformersEngine):
        assert any(late not in ids for ids in steps)
    assert counts == [EARLY_TOKENS] * 3 + [LATE_TOKENS]


def test_priority_must_be_an_integer() -> None:
    assert SamplingParams(priority=-3).priority == -3
    for bad in (1.5, "0", True):
        with pytest.raises(InvalidSamplingError, match="priority"):
            SamplingParams(priority=bad)  # type: ignore[arg-type]
