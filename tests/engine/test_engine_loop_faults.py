"""Issue 24: a fault in any stage of either local engine's loop fails only the caller whose sequence it hit.

For each stage (schedule, forward, sample, emit, refuse, update) a bug is injected into the real code path of
that stage, raising only for the faulty caller's sequence (monkeypatched: a real engine has no switch for its
own bugs). An unrelated greedy generation runs concurrently, mid-way when the fault fires; it must finish with
exactly the tokens it produces alone, the faulty caller must get a typed EngineError, and the loop must go on.
Engines: the tiny random transformers model and the SmolLM2 GGUF on llama.cpp, both with a small KV budget
(256 tokens) so that the refuse stage can be reached with a pinned sequence holding most of it, and
pin_wait_s=0 so that work the pin keeps out is refused at once instead of waiting for it.
Run with `-s` to print the stage x engine table (lines starting `FAULT |`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import engine.step_sampling
from engine import EngineError, SamplingParams, Sequence, StepFailedError
from tests.conftest import chat_ids, collect
from tests.engine.test_transformers_engine_tiny import greedy, rand_tokens, small_engine

GUARD_S = 60  # a stalled engine fails the test instead of hanging the suite
N = 12  # tokens of the unrelated generation
STAGES = ("schedule", "forward", "sample", "emit", "refuse", "update")


class InjectedFault(RuntimeError):
    """The bug planted in a stage."""


@pytest.fixture(scope="module")
async def small_llamacpp() -> AsyncIterator[Any]:
    """The llama.cpp engine over the shipped GGUF with 256 KV cells."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    eng = LlamaCppEngine(kv_cells=256, n_seq_max=8, pin_wait_s=0)
    yield eng
    await eng.shutdown()


@pytest.fixture
async def small_tiny() -> AsyncIterator[Any]:
    """A fresh tiny-model engine with 64 blocks of 4 tokens."""
    tiny = small_engine(blocks=64, pin_wait_s=0)
    yield tiny
    await tiny.shutdown()


@pytest.fixture(params=["transformers", "llamacpp"])
def eng(request: pytest.FixtureRequest) -> Any:
    """A small-budget engine of each kind."""
    return request.getfixturevalue("small_tiny" if request.param == "transformers" else "small_llamacpp")


class Injector:
    """Plants the fault of one stage for the faulty sequence and records what was running when it fired."""

    def __init__(self, eng: Any, faulty: Sequence, good: Sequence, faulty_params: SamplingParams) -> None:
        self.eng, self.faulty, self.good, self.params = eng, faulty, good, faulty_params
        self.fired = 0
        self.good_running: list[bool] = []  # per firing: the unrelated generation was mid-way
        self.batched_with_good: list[bool] = []  # forward only: the failed batch held the unrelated sequence too

    def fire(self) -> None:
        self.fired += 1
        self.good_running.append(self.eng._table.get(self.good).generation is not None)
        raise InjectedFault(f"injected fault #{self.fired}")

    def plant(self, stage: str, mp: pytest.MonkeyPatch) -> None:
        """Install the stage's fault (emit's is planted on the generation, see plant_emit)."""
        eng, fid, gid = self.eng, self.faulty.id, self.good.id
        if stage == "schedule":
            draft = eng._scheduler._draft
            mp.setattr(eng._scheduler, "_draft", lambda s, room: self.fire() if s.id == fid else draft(s, room))
        elif stage == "forward" and hasattr(eng, "_runner"):
            execute = eng._runner.execute

            def run(step: Any) -> Any:
                ids = {c.seq.id for c in step.chunks}
                if fid in ids:
                    self.batched_with_good.append(gid in ids)
                    self.fire()
                return execute(step)

            mp.setattr(eng._runner, "execute", run)
        elif stage == "forward":
            decode = eng.context.decode

            def run_llama(tokens: Any) -> Any:
                slots = {t.slot for t in tokens}
                if eng._table.get(self.faulty).slot in slots:
                    self.batched_with_good.append(eng._table.get(self.good).slot in slots)
                    self.fire()
                return decode(tokens)

            mp.setattr(eng.context, "decode", run_llama)
        elif stage == "sample":
            real = engine.step_sampling.sample_rows
            passes = [0]

            def sample_rows(logits: Any, rows: Any) -> Any:
                if any(r.params is self.params for r in rows):
                    passes[0] += 1
                    if passes[0] >= 3:  # the third token: sampled after a forward
                        self.fire()
                return real(logits, rows)

            mp.setattr(engine.step_sampling, "sample_rows", sample_rows)
        elif stage == "refuse":
            mp.setattr(eng, "_capacity_error", lambda s: self.fire())
        elif stage == "update":
            account = eng._table.account
            mp.setattr(eng._table, "account", lambda s, **kw: self.fire() if s.id == fid else account(s, **kw))

    def plant_emit(self, mp: pytest.MonkeyPatch) -> None:
        """The faulty generation's detokenizer raises on its third token (the issue's case)."""
        detok = self.eng._table.get(self.faulty).generation.detok
        push, calls = detok.push, [0]

        def failing_push(token: int) -> Any:
            calls[0] += 1
            if calls[0] == 3:
                self.fire()
            return push(token)

        mp.setattr(detok, "push", failing_push)


async def drain(stream: AsyncIterator[Any], ids: list[int]) -> list[int]:
    """The rest of a token stream, after the ids already read."""
    async for delta in stream:
        ids.extend(delta.token_ids)
    return ids


async def with_fault(eng: Any, stage: str, mp: pytest.MonkeyPatch) -> tuple[Any, list[int], list[int], Injector]:
    """Run the unrelated generation alone, then again beside the faulty caller with the stage's fault planted:
    (what the faulty caller got, the unrelated tokens, those alone, the injector)."""
    # A chat prompt on the real model (random ids there give near-ties that any change of cache layout flips).
    good_prompt = rand_tokens(12, seed=7) if hasattr(eng, "_runner") else chat_ids(eng, "Count from 1 to 20.")
    faulty = await eng.open(rand_tokens(180 if stage == "refuse" else 10, seed=8))
    if stage == "refuse":
        await eng.pin(faulty)  # holds most of the KV budget, so the faulty caller's prompt can never fit
    # The unrelated generation run alone, in the same cache (llama.cpp's attention sums over the cells in use,
    # so another sequence's KV may flip a near-tie even when it is not batched in).
    ref = await eng.open(good_prompt)
    alone, _, _ = await collect(eng, ref, greedy(N))
    await eng.close(ref)
    good = await eng.open(good_prompt)
    params = greedy(8)
    inj = Injector(eng, faulty, good, params)
    inj.plant(stage, mp)
    stream = eng.generate(good, greedy(N))
    got = list((await asyncio.wait_for(anext(stream), GUARD_S)).token_ids)  # the unrelated one is mid-way now
    call: Callable[[], Awaitable[Any]]
    if stage == "refuse":
        async def call() -> Any:
            return await eng.open(rand_tokens(100, seed=9))
    else:
        faulty_stream = eng.generate(faulty, params)
        if stage == "emit":
            inj.plant_emit(mp)

        async def call() -> Any:
            return await drain(faulty_stream, [])
    faulty_result, good_ids = await asyncio.wait_for(
        asyncio.gather(call(), drain(stream, got), return_exceptions=True), GUARD_S)
    mp.undo()
    if stage == "refuse":
        await eng.unpin(faulty)
    assert not isinstance(good_ids, BaseException), f"the unrelated generation failed: {good_ids!r}"
    after, _, reason = await collect(eng, faulty, greedy(3))  # the loop goes on, the faulty sequence too
    assert (len(after), reason) == (3, "length")
    for s in (faulty, good):
        await eng.close(s)
    return faulty_result, good_ids, alone, inj


@pytest.mark.parametrize("stage", STAGES)
async def test_a_fault_in_one_stage_fails_only_its_caller(eng: Any, stage: str) -> None:
    mp = pytest.MonkeyPatch()
    try:
        faulty, good_ids, alone, inj = await with_fault(eng, stage, mp)
    finally:
        mp.undo()
    assert inj.fired >= 1, f"the {stage} fault never fired"
    assert all(inj.good_running), "the fault fired while the unrelated generation was running"
    if stage == "forward":
        assert inj.batched_with_good[0], "the failed batch held both sequences: the rerun one by one isolated them"
    assert isinstance(faulty, EngineError), f"the faulty caller got {faulty!r}, not a typed error"
    if stage != "sample":
        assert isinstance(faulty, StepFailedError) and "injected fault" in str(faulty)
    assert good_ids == alone, "the unrelated generation's tokens changed"
    assert eng._task is not None and not eng._task.done(), "the loop task survived"
    kind = "transformers" if hasattr(eng, "_runner") else "llamacpp"
    print(f"\nFAULT | {stage} | {kind} | {type(faulty).__name__}: {str(faulty)[:90]} | "
          f"{len(good_ids)} tokens, equal to its run alone | fired {inj.fired}x")


async def test_a_fault_outside_any_sequence_fails_the_waiting_work_and_the_loop_stops_spinning(
        eng: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """schedule() raising before any sequence's part fails every waiting caller; the next call is served."""
    seq = await eng.open(rand_tokens(10, seed=3))
    schedule, calls = eng._scheduler.schedule, [0]

    def broken() -> Any:
        calls[0] += 1
        raise InjectedFault("scheduler state is broken")

    monkeypatch.setattr(eng._scheduler, "schedule", broken)
    with pytest.raises(StepFailedError, match=r"schedule stage failed.*scheduler state is broken"):
        await asyncio.wait_for(eng.append(seq, [5, 6]), GUARD_S)
    assert calls[0] <= 3, "the loop does not spin on a fault nobody waits behind"
    monkeypatch.setattr(eng._scheduler, "schedule", schedule)
    ids, _, _ = await collect(eng, seq, greedy(3))
    assert len(ids) == 3 and len(eng.tokens(seq)) == 13, "the failed append's tokens were taken back"
    await eng.close(seq)
