"""Issue 11 on the tiny model: faults stay in their request, context length, salted and verified prefix cache,
fail-before-evict, counters measured at the model, and the generate/cancel and rewind races."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from engine import (
    CapacityError,
    ContextLengthError,
    EngineError,
    InvalidSamplingError,
    InvalidTokensError,
    SamplingParams,
    Sequence,
    block_pool,
)
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, count_model_positions, tiny_llama
from tests.engine.test_transformers_engine_tiny import (
    BS,
    VOCAB,
    greedy,
    hf_generate,
    rand_tokens,
    small_engine,
)

GUARD_S = 20  # a stalled engine fails the test quickly instead of hanging the suite

ALL_BANNED = SamplingParams(max_tokens=5, temperature=1.0, banned_token_ids=tuple(range(VOCAB)))  # sample() raises


async def guarded(eng: TransformersEngine, seq: Sequence, params: SamplingParams) -> tuple[list[int], str, Any]:
    """collect() under this module's short guard."""
    return await asyncio.wait_for(collect(eng, seq, params), GUARD_S)


# ------------------------------------------------------------------------------------------- 1. fault confinement


async def test_bad_sampling_from_cached_logits_fails_alone(tiny_engine: TransformersEngine) -> None:
    """A first token that cannot be sampled fails only its stream; a concurrent greedy stream is unaffected."""
    good_tokens = rand_tokens(11, seed=1)
    alone = await tiny_engine.open(good_tokens)
    expected, _, _ = await guarded(tiny_engine, alone, greedy(12))
    await tiny_engine.close(alone)

    bad = await tiny_engine.open(rand_tokens(9, seed=2))  # fully computed: its first token comes from cached logits
    good = await tiny_engine.open(good_tokens)
    results = await asyncio.gather(guarded(tiny_engine, bad, ALL_BANNED), guarded(tiny_engine, good, greedy(12)),
                                   return_exceptions=True)
    assert isinstance(results[0], EngineError) and "sampling failed" in str(results[0])
    assert not isinstance(results[1], BaseException), results[1]
    assert results[1][0] == expected
    # The engine and the failed sequence keep working.
    again, _, reason = await guarded(tiny_engine, bad, greedy(3))
    assert len(again) == 3 and reason == "length"
    for s in (bad, good):
        await tiny_engine.close(s)


async def test_bad_sampling_in_the_worker_fails_alone(tiny_engine: TransformersEngine) -> None:
    """Sampling that raises on the worker thread fails that sequence only, not the others packed in its step."""
    good_tokens = rand_tokens(13, seed=3)
    alone = await tiny_engine.open(good_tokens)
    expected, _, _ = await guarded(tiny_engine, alone, greedy(12))
    await tiny_engine.close(alone)

    bad = await tiny_engine.open(rand_tokens(9, seed=4))
    await guarded(tiny_engine, bad, greedy(2))  # its last token is sampled, not computed: next one is a forward
    good = await tiny_engine.open(good_tokens)
    results = await asyncio.gather(guarded(tiny_engine, bad, ALL_BANNED), guarded(tiny_engine, good, greedy(12)),
                                   return_exceptions=True)
    assert isinstance(results[0], EngineError) and "sampling failed" in str(results[0])
    assert not isinstance(results[1], BaseException), results[1]
    assert results[1][0] == expected
    for s in (bad, good):
        await tiny_engine.close(s)


async def test_sampling_params_validated_at_entry(tiny_engine: TransformersEngine) -> None:
    """A temperature below 1e-5 is greedy (as vLLM); out-of-vocabulary ids fail at generate() naming the field."""
    assert SamplingParams(temperature=1e-40).greedy and SamplingParams(temperature=9e-6).greedy
    assert not SamplingParams(temperature=1e-5).greedy
    for bad_value in (float("nan"), float("inf"), -1e-40):
        with pytest.raises(InvalidSamplingError, match="temperature"):
            SamplingParams(temperature=bad_value)
    with pytest.raises(InvalidSamplingError, match="banned_token_ids"):
        SamplingParams(banned_token_ids=(-1,))

    seq = await tiny_engine.open(rand_tokens(10, seed=5))
    for field in ("banned_token_ids", "stop_token_ids"):
        with pytest.raises(InvalidSamplingError, match=field):
            tiny_engine.generate(seq, SamplingParams(**{field: (3, VOCAB + 7)}))
    tiny = await guarded(tiny_engine, seq, SamplingParams(max_tokens=6, temperature=1e-40, ignore_eos=True))
    fork = await tiny_engine.fork(seq)
    await tiny_engine.close(seq)
    seq = await tiny_engine.open(rand_tokens(10, seed=5))
    ref = await guarded(tiny_engine, seq, greedy(6))
    assert tiny[0] == ref[0], "temperature 1e-40 samples greedily instead of failing on inf/nan"
    for s in (seq, fork):
        await tiny_engine.close(s)


# ------------------------------------------------------------------------------------------- 2. context length


async def test_context_length_is_enforced() -> None:
    """open/append beyond max_model_len raise ContextLengthError; generate at the limit ends at once."""
    eng = TransformersEngine(tiny_llama(), block_size=BS, kv_cache_bytes=4 << 20, max_model_len=32)
    try:
        with pytest.raises(ContextLengthError, match="33 tokens exceeds max_model_len=32") as err:
            await eng.open(rand_tokens(33, seed=1))
        assert isinstance(err.value, InvalidTokensError)
        seq = await eng.open(rand_tokens(30, seed=2))
        with pytest.raises(ContextLengthError, match="34 tokens exceeds max_model_len=32"):
            await eng.append(seq, rand_tokens(4, seed=3))
        parent = await eng.open(rand_tokens(31, seed=4))
        with pytest.raises(ContextLengthError):
            await eng.open([1, 2], parent=parent)

        # Decoding stops at the limit with "length"...
        ids, _, reason = await guarded(eng, seq, greedy(50))
        assert (len(ids), reason, len(eng.tokens(seq))) == (2, "length", 32)
        # ...and a generate on a full sequence ends at once, with no token.
        deltas = [d async for d in eng.generate(seq, greedy(5))]
        assert [(d.token_ids, d.text, d.finish_reason) for d in deltas] == [((), "", "length")]
        assert len(eng.tokens(seq)) == 32
        ids, _, _ = await guarded(eng, parent, greedy(5))  # the engine keeps serving
        assert len(ids) == 1
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- 3. prefix-cache keys


async def test_cache_salts_separate_tenants(tiny_engine: TransformersEngine, ref_model: Any) -> None:
    """Two salts never share blocks, the same salt does, an unsalted open sees neither; forks keep the salt."""
    prefix = rand_tokens(32, seed=11)
    a = await tiny_engine.open([*prefix, 5], cache_salt="alice")
    with count_model_positions(tiny_engine) as fed:
        b = await tiny_engine.open([*prefix, 6], cache_salt="bob")
    assert tiny_engine.seq_stats(b).prefill_reused == 0 and fed.count == 33
    plain = await tiny_engine.open([*prefix, 7])
    assert tiny_engine.seq_stats(plain).prefill_reused == 0
    with count_model_positions(tiny_engine) as fed:
        a2 = await tiny_engine.open([*prefix, 8], cache_salt="alice")
    assert tiny_engine.seq_stats(a2).prefill_reused == 32 and fed.count == 1
    ids, _, _ = await guarded(tiny_engine, a2, greedy(5))
    assert ids == hf_generate(ref_model, [*prefix, 8], 5)

    # A fork keeps its parent's salt: the blocks it fills are found by that salt only.
    with pytest.raises(EngineError, match="cache_salt"):
        await tiny_engine.open([], parent=a, cache_salt="bob")
    child = await tiny_engine.open(rand_tokens(12, seed=12), parent=a)
    full = tiny_engine.tokens(child)
    assert tiny_engine.seq_stats(await tiny_engine.open(full, cache_salt="carol")).prefill_reused == 0
    assert tiny_engine.seq_stats(await tiny_engine.open(full, cache_salt="alice")).prefill_reused == 44


async def test_forged_hash_collision_is_not_served(tiny_engine: TransformersEngine, ref_model: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With every prefix-cache key colliding, another prompt's KV is never read: blocks are verified."""

    class Constant:
        def update(self, data: bytes) -> None:
            """Ignore the data."""

        def digest(self) -> bytes:
            """The one digest."""
            return b"\x00" * 32

    monkeypatch.setattr(block_pool.hashlib, "sha256", lambda *a: Constant())
    victim = rand_tokens(32, seed=21)
    attacker = rand_tokens(32, seed=22)
    await tiny_engine.open([*attacker, 1])
    seq = await tiny_engine.open([*victim, 2])
    assert tiny_engine.seq_stats(seq).prefill_reused == 0, "a colliding key with other tokens is a miss"
    ids, _, _ = await guarded(tiny_engine, seq, greedy(6))
    assert ids == hf_generate(ref_model, [*victim, 2], 6)


# ------------------------------------------------------------------------------------------- 5. fail before evicting


async def test_oversized_request_fails_before_evicting() -> None:
    """A prompt that cannot fit even with every idle sequence evicted fails at once and evicts nothing."""
    eng = small_engine(blocks=8)  # 32 tokens of KV
    eng.max_tokens_per_step = 8  # chunked prefill: the first chunk alone would fit after evicting
    try:
        idle = [await eng.open(rand_tokens(12, seed=i)) for i in range(2)]  # 6 blocks held
        with pytest.raises(CapacityError):
            await asyncio.wait_for(eng.open(rand_tokens(40, seed=9)), GUARD_S)
        st = eng.stats()
        assert (st.evictions, st.sequences_resident) == (0, 2), "the idle sequences keep their KV"
        with count_model_positions(eng) as fed:
            await eng.append(idle[0], [3])
        assert fed.count == 1, "nothing was evicted, so nothing is recomputed"
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- 6. counters


async def test_counters_equal_model_positions_under_eviction(ref_model: Any) -> None:
    """Through evictions and recomputes, prefill_computed + decode_tokens equals what the model computed;
    re-matched blocks are not counted as reused twice, and a sampled token is a decode even after eviction."""
    eng = small_engine(blocks=16)
    try:
        with count_model_positions(eng) as fed:
            a = await eng.open(rand_tokens(23, seed=1))
            await guarded(eng, a, greedy(3))  # 26 tokens; the last one sampled, not computed
            reused = eng.stats().prefill_reused
            b = await eng.open(rand_tokens(24, seed=2))
            c = await eng.open(rand_tokens(24, seed=3))  # evicts a
            assert eng.stats().evictions >= 1
            before = eng.seq_stats(a)
            await eng.append(a, [4, 5])
            after = eng.seq_stats(a)
            assert after.decode_tokens - before.decode_tokens == 1, "the sampled token is a decode, not a prefill"
            assert eng.stats().prefill_reused == reused, "blocks re-matched after an eviction are not counted again"
            await guarded(eng, b, greedy(4))
            await guarded(eng, c, greedy(4))
        st = eng.stats()
        assert fed.count == st.prefill_computed + st.decode_tokens
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------------------- 8. races


async def test_restarted_generation_never_gets_the_old_settings_token(tiny_engine: TransformersEngine) -> None:
    """Cancel a generation after the worker sampled its next token and start another at once: the token drawn
    with the old settings is dropped, never handed to the new generation."""
    only = 7
    old = SamplingParams(max_tokens=100, ignore_eos=True, banned_token_ids=tuple(t for t in range(VOCAB) if t != only))
    new = SamplingParams(max_tokens=3, ignore_eos=True, banned_token_ids=(only,))
    seq = await tiny_engine.open(rand_tokens(10, seed=31))
    loop, runner = asyncio.get_running_loop(), tiny_engine._runner
    original = runner.execute
    sampled, proceed = asyncio.Event(), threading.Event()

    def execute(step: Any) -> Any:
        out = original(step)  # the next token is sampled here, with the settings of the generation running now
        if not proceed.is_set():
            loop.call_soon_threadsafe(sampled.set)
            proceed.wait(GUARD_S)  # hold the step's result back until the generation was swapped
        return out

    runner.execute = execute
    try:
        stream = tiny_engine.generate(seq, old)
        first = await stream.__anext__()  # from the stored logits; the next token's forward starts now
        assert first.token_ids == (only,)
        await asyncio.wait_for(sampled.wait(), GUARD_S)
        await stream.aclose()
        restarted = asyncio.ensure_future(guarded(tiny_engine, seq, new))
        await asyncio.sleep(0)
        proceed.set()
        ids, _, _ = await restarted
    finally:
        proceed.set()
        runner.execute = original
    assert only not in ids, f"the new generation got {ids}: a token sampled with the cancelled one's settings"
    await tiny_engine.close(seq)


@contextmanager
def forbid_writes_into_shared_blocks(eng: TransformersEngine) -> Iterator[list[int]]:
    """Fail if a step writes KV into a block that is shared or registered in the prefix cache."""
    runner, pool, written = eng._runner, eng._kv.pool, []
    original = runner.execute

    def execute(step: Any) -> Any:
        for c in step.chunks:
            for p in range(c.start, c.end):
                b = c.seq.blocks[p // BS]
                written.append(b)
                assert pool.refcount(b) == 1 and not pool.is_cached(b), f"position {p} written into block {b}"
        return original(step)

    runner.execute = execute
    try:
        yield written
    finally:
        runner.execute = original


async def test_rewind_never_writes_into_a_shared_block(ref_model: Any) -> None:
    """After a failed append, generate recomputes the last token without writing into a shared full block."""
    eng = small_engine(blocks=12)
    try:
        tokens = rand_tokens(16, seed=41)  # 4 full blocks, all registered
        parent = await eng.open(tokens)
        child = await eng.fork(parent)  # shares them
        with pytest.raises(CapacityError):
            await asyncio.wait_for(eng.append(parent, rand_tokens(40, seed=42)), GUARD_S)
        with forbid_writes_into_shared_blocks(eng) as written:
            ids, _, _ = await guarded(eng, parent, greedy(4))
        assert written, "the last token was recomputed"
        assert ids == hf_generate(ref_model, tokens, 4)
        ids, _, _ = await guarded(eng, child, greedy(4))
        assert ids == hf_generate(ref_model, tokens, 4), "the fork's shared KV is intact"
    finally:
        await eng.shutdown()
