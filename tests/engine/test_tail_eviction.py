"""Tail eviction on both local engines: an idle sequence under KV pressure gives back its coldest tail first.

Each scenario runs twice on the same real model, once under a budget that forces evictions and once with room
to spare; greedy output must be the same token for token, and the counters must show that only the dropped tail
was recomputed (the head stayed resident) and that a prefix shared by forks stayed shared. The engines are the
tiny random Llama on the transformers engine and the shipped SmolLM2 GGUF on the llama.cpp engine.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine import SamplingParams
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, tiny_llama

BS = 4  # block size of the transformers engines here (the llama.cpp engine indexes blocks of 16, keeps cells)


def greedy(n: int) -> SamplingParams:
    """Greedy decoding of exactly n tokens."""
    return SamplingParams(max_tokens=n, ignore_eos=True)


def rand_tokens(n: int, seed: int) -> list[int]:
    """n random non-EOS ids of the tiny model's vocabulary (its weights are random: every context is as good)."""
    rng = random.Random(seed)
    return [rng.randrange(1, 511) for _ in range(n)]


_FACTS = ["The river runs past the old mill and the mill wheel turns all day.",
          "Seven ships left the harbour at dawn, each with a red sail.",
          "A tool call returns JSON; the agent reads it and calls the next tool.",
          "Every morning the baker bakes bread, buns and two kinds of cake."]


def text_tokens(eng: Any) -> Callable[[int, int], list[int]]:
    """n ids of an English passage picked by seed, repeated: real text the SmolLM2 model continues with
    confidence (random ids give near-ties that a different prefill chunking may flip)."""
    def make(n: int, seed: int) -> list[int]:
        one = eng.tokenizer.encode(f"Note {seed}. " + _FACTS[seed % len(_FACTS)] + " ", add_special_tokens=False)
        return (one * (n // len(one) + 1))[:n]
    return make


def transformers_engine(blocks: int) -> TransformersEngine:
    """The tiny random Llama on an engine whose KV budget holds exactly `blocks` blocks of BS tokens."""
    probe = tiny_llama()
    cfg = probe.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_block = 2 * cfg.num_hidden_layers * BS * cfg.num_key_value_heads * head_dim * 4
    return TransformersEngine(probe, block_size=BS, kv_cache_bytes=blocks * per_block)


def llamacpp_engine(cells: int) -> Any:
    """The shipped GGUF on a llama.cpp engine whose KV budget holds `cells` cells."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    return LlamaCppEngine(kv_cells=cells, n_seq_max=8, max_tokens_per_step=128)


Tokens = Callable[[int, int], list[int]]  # (n, seed) -> n token ids


def tokens_for(eng: Any) -> Tokens:
    """The token source of a scenario on this engine."""
    return rand_tokens if isinstance(eng, TransformersEngine) else text_tokens(eng)


async def one_tail(eng: Any, u: int) -> dict[str, Any]:
    """a (10 units), b (4 units) and c (5 units) on a budget of 18 units: opening c takes one unit of a's tail;
    then a is continued, then b. Returns the outputs and the counters along the way."""
    tok = tokens_for(eng)
    a = await eng.open(tok(10 * u, 1))
    b = await eng.open(tok(4 * u, 2))
    c = await eng.open(tok(5 * u, 3))
    out: dict[str, Any] = {"after_c": eng.seq_stats(a), "resident_after_c": eng.stats().sequences_resident}
    await eng.append(a, tok(3, 4))
    out["after_append"] = eng.seq_stats(a)
    out["a"] = (await collect(eng, a, greedy(8)))[0]
    out["b"] = (await collect(eng, b, greedy(8)))[0]
    out["c"] = (await collect(eng, c, greedy(8)))[0]
    out["stats"] = {n: eng.seq_stats(s) for n, s in (("a", a), ("b", b), ("c", c))}
    out["engine"] = eng.stats()
    return out


async def shared_prefix(eng: Any, prefix: int, own: int, pressure: int) -> dict[str, Any]:
    """p (`prefix` tokens) forked into x and y, each with `own` tokens of its own, then z (`pressure` tokens)
    opened: p is the least recently used but holds only shared KV, so x gives back its own tail; then x and y
    are continued."""
    tok = tokens_for(eng)
    p = await eng.open(tok(prefix, 11))
    x = await eng.fork(p)
    await eng.append(x, tok(own, 12))
    y = await eng.fork(p)
    await eng.append(y, tok(own, 13))
    zz = await eng.open(tok(pressure, 14))
    out: dict[str, Any] = {"after_z": {n: eng.seq_stats(s) for n, s in (("p", p), ("x", x), ("y", y))}}
    out["x"] = (await collect(eng, x, greedy(6)))[0]
    out["p_after_x"] = eng.seq_stats(p)
    out["y"] = (await collect(eng, y, greedy(6)))[0]
    out["stats"] = {n: eng.seq_stats(s) for n, s in (("p", p), ("x", x), ("y", y), ("z", zz))}
    return out


async def preempted_tail(eng: Any, u: int, n: int) -> dict[str, Any]:
    """x (5 units) and the younger y (9 units) both generate n tokens, more than the budget has free: x's decodes
    take y's KV (recompute preemption), y waits for x to end, then goes on. y's generation is asked for once x
    has written two tokens, so it is the younger work (y's open, long done, is not part of its turn)."""
    tok = tokens_for(eng)
    x = await eng.open(tok(5 * u, 21))
    y = await eng.open(tok(9 * u, 22))
    x_stream = eng.generate(x, greedy(n))
    xs = [t for _ in range(2) for t in (await anext(x_stream)).token_ids]

    async def rest_of_x() -> list[int]:
        return xs + [t async for delta in x_stream for t in delta.token_ids]

    xs, (ys, _, _) = await asyncio.gather(rest_of_x(), collect(eng, y, greedy(n)))
    return {"x": xs, "y": ys, "stats": {"x": eng.seq_stats(x), "y": eng.seq_stats(y)}, "engine": eng.stats()}


def check_preempted_tail(tight: dict[str, Any], roomy: dict[str, Any], unit: int) -> None:
    """Outputs equal; y gave back tail KV to x a piece at a time and recomputed exactly that, never its head."""
    assert tight["x"] == roomy["x"] and tight["y"] == roomy["y"]
    assert roomy["engine"].preemptions == 0 and tight["engine"].preemptions >= 1
    st = tight["stats"]
    assert st["x"].recomputed_after_eviction == 0, "the older work kept its KV while it ran (y takes x's tail after)"
    assert st["y"].recomputed_after_eviction == st["y"].evicted_tokens > 0
    assert st["y"].evicted_tokens < 9 * unit, "y kept the head of its context"


async def run(make: Callable[[], Any], script: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    eng = make()
    try:
        return await script(eng)
    finally:
        await eng.shutdown()


def check_one_tail(tight: dict[str, Any], roomy: dict[str, Any], unit: int) -> None:
    """The pressured run wrote what the roomy one did, dropping and recomputing only the tail it had to."""
    for name in "abc":
        assert tight[name] == roomy[name], f"{name} wrote other tokens after its tail was evicted"
    assert roomy["engine"].evicted_tokens == 0 and roomy["engine"].evictions == 0
    assert tight["after_c"].evicted_tokens == unit, "a gave back exactly the one unit c lacked"
    assert tight["resident_after_c"] == 3, "a kept its head resident"
    after = tight["after_append"]
    assert after.recomputed_after_eviction == unit, "continuing a recomputed the dropped tail, not its context"
    assert after.prefill_computed == unit + 3 + 10 * unit
    for st in tight["stats"].values():
        assert st.recomputed_after_eviction <= st.evicted_tokens
    eng = tight["engine"]
    assert eng.evicted_tokens == sum(st.evicted_tokens for st in tight["stats"].values()) > unit
    assert eng.recomputed_after_eviction == sum(st.recomputed_after_eviction for st in tight["stats"].values())
    assert eng.evictions >= 2


def check_shared_prefix(tight: dict[str, Any], roomy: dict[str, Any], x_lost: int) -> None:
    """Outputs equal; the fork x lost `x_lost` of its own tokens, the shared prefix held by p stayed resident."""
    assert tight["x"] == roomy["x"] and tight["y"] == roomy["y"]
    after = tight["after_z"]
    assert after["p"].evicted_tokens == 0, "the prefix p shares with its forks was kept"
    assert after["x"].evicted_tokens == x_lost and after["y"].evicted_tokens == 0
    st = tight["stats"]
    assert st["x"].recomputed_after_eviction == x_lost, "x recomputed its own tail only, never the shared prefix"
    assert tight["p_after_x"].evicted_tokens == 0, "y gave back its own tail for x, not the shared prefix"
    assert st["y"].recomputed_after_eviction == st["y"].evicted_tokens > 0
    assert all(v.evicted_tokens == 0 for v in roomy["stats"].values())


# ------------------------------------------------------------------------------------------- transformers engine


async def test_transformers_tail_eviction_is_exact_and_keeps_the_head() -> None:
    """Tiny random Llama: a budget of 18 blocks against one of 1000."""
    tight = await run(lambda: transformers_engine(18), lambda e: one_tail(e, BS))
    roomy = await run(lambda: transformers_engine(1000), lambda e: one_tail(e, BS))
    check_one_tail(tight, roomy, BS)


async def test_transformers_tail_eviction_keeps_a_shared_prefix() -> None:
    """4 shared blocks + 4 own blocks per fork on 16 blocks: opening 6 blocks takes 2 of x's own."""
    script = lambda e: shared_prefix(e, prefix=4 * BS, own=4 * BS, pressure=6 * BS)  # noqa: E731
    tight = await run(lambda: transformers_engine(16), script)
    roomy = await run(lambda: transformers_engine(1000), script)
    check_shared_prefix(tight, roomy, x_lost=2 * BS)


async def test_transformers_preemption_takes_the_tail_only() -> None:
    """Busy work preempted for older work gives back its tail blocks, as many as lacking, not its whole KV."""
    # 14 of 16 blocks taken: 16 tokens each need 8 more.
    tight = await run(lambda: transformers_engine(16), lambda e: preempted_tail(e, BS, 16))
    roomy = await run(lambda: transformers_engine(1000), lambda e: preempted_tail(e, BS, 16))
    check_preempted_tail(tight, roomy, BS)


# ------------------------------------------------------------------------------------------- llama.cpp engine


async def test_llamacpp_tail_eviction_is_exact_and_keeps_the_head() -> None:
    """SmolLM2 GGUF, units of 16 cells: 288 cells against 4096; seq_rm drops exactly the cells c lacked."""
    tight = await run(lambda: llamacpp_engine(18 * 16), lambda e: one_tail(e, 16))
    roomy = await run(lambda: llamacpp_engine(4096), lambda e: one_tail(e, 16))
    check_one_tail(tight, roomy, 16)


async def test_llamacpp_tail_eviction_keeps_a_shared_prefix() -> None:
    """64 shared cells + 32 own per fork on 180 cells: opening 80 takes the 28 cells lacking from x's own."""
    script = lambda e: shared_prefix(e, prefix=64, own=32, pressure=80)  # noqa: E731
    tight = await run(lambda: llamacpp_engine(180), script)
    roomy = await run(lambda: llamacpp_engine(4096), script)
    check_shared_prefix(tight, roomy, x_lost=28)


async def test_llamacpp_preemption_takes_the_tail_only() -> None:
    """Busy work preempted for older work gives back its tail cells (seq_rm), as many as lacking."""
    # 224 of 240 cells taken: 16 tokens each need 32 more. Kept short: with 64 tokens each, x (never preempted)
    # wrote another 27th token than without pressure, as llama.cpp's sums shift with the decode's batch size.
    tight = await run(lambda: llamacpp_engine(15 * 16), lambda e: preempted_tail(e, 16, 16))
    roomy = await run(lambda: llamacpp_engine(4096), lambda e: preempted_tail(e, 16, 16))
    check_preempted_tail(tight, roomy, 16)
