"""The engine benchmark: what an O(Δ) append saves over a re-prefill, and what batching concurrent streams buys.

A library: `moa-stream bench engine` prints what `bench_engine` returns.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from engine import Engine, InvalidTokensError, SamplingParams, Sequence


@dataclass
class EngineBenchResult:
    """Bench figures; the first block is the contract of `moa-stream bench engine --json`, the rest extras."""

    reprefill_ms: float  # fresh prefill of context + delta tokens (nothing cached)
    append_ms: float  # append of the same delta tokens to a live sequence (median of `repeats`)
    append_speedup: float  # reprefill_ms / append_ms
    append_tokens_computed: int  # tokens the append computed, from seq_stats()
    tok_s_1: float  # decode tokens/s of one stream
    tok_s_4: float  # decode tokens/s of four concurrent streams, all tokens together
    batch_speedup: float  # tok_s_4 / tok_s_1
    model: str = ""
    context_tokens: int = 0
    delta_tokens: int = 0
    decode_tokens_per_stream: int = 0
    reprefill_tokens_computed: int = 0
    prefix_open_ms: float = 0.0  # open a new sequence = the cached context + delta different tokens
    prefix_open_tokens_computed: int = 0
    prefix_open_tokens_reused: int = 0
    fork_ms: float = 0.0
    fork_tokens_computed: int = 0
    tok_s: dict[int, float] = field(default_factory=dict)  # streams -> decode tokens/s (all streams counted)
    backend: str = ""
    # llama.cpp's own server on the same GGUF, 1 and 4 concurrent requests (None: not measured, e.g. a HF model)
    peer_tok_s_1: float | None = None
    peer_tok_s_4: float | None = None
    tok_s_4_vs_peer: float | None = None  # tok_s_4 / peer_tok_s_4
    # Decode tokens/s of sampled streams (SAMPLED: temperature 0.7, top-p 0.9, repetition penalty 1.1), measured
    # right after the greedy streams of the same count, and what they keep of the greedy rate.
    sampled_tok_s_1: float = 0.0
    sampled_tok_s_4: float = 0.0
    sampled_vs_greedy_1: float = 0.0  # sampled_tok_s_1 / tok_s_1
    sampled_vs_greedy_4: float = 0.0  # sampled_tok_s_4 / tok_s_4

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, contract fields first, plus tok_s_<n> for every stream count measured."""
        out = asdict(self)
        per = out.pop("tok_s")
        for n, v in per.items():
            out.setdefault(f"tok_s_{n}", v)
        out["tok_s"] = {str(n): v for n, v in per.items()}
        return out


# What a MoA proposer samples with: the sampled columns' parameters (max_tokens and ignore_eos set per run).
SAMPLED = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1)


def _random_tokens(rng: random.Random, n: int, vocab: int, avoid: frozenset[int]) -> list[int]:
    # Random ids keep the prefix cache cold across runs; content does not change the cost of a forward pass.
    out: list[int] = []
    while len(out) < n:
        t = rng.randrange(1, vocab)
        if t not in avoid:
            out.append(t)
    return out


def _vocab_size(engine: Engine) -> int:
    # Ids both the tokenizer and the model know (a tiny test model may have fewer than its tokenizer).
    return min(len(engine.tokenizer), engine.vocab_size)


async def _decode_rate(engine: Engine, prompts: list[list[int]], n_tokens: int,
                       sampling: SamplingParams | None = None) -> float:
    """Decode tokens/s of len(prompts) concurrent streams (prompts prefilled before the clock starts), greedy
    unless `sampling` says otherwise."""
    seqs: list[Sequence] = [await engine.open(p) for p in prompts]
    params = replace(sampling or SamplingParams(), max_tokens=n_tokens, ignore_eos=True)

    async def run(seq: Sequence) -> int:
        count = 0
        async for delta in engine.generate(seq, params):
            count += len(delta.token_ids)
        return count

    try:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(run(s) for s in seqs))
        elapsed = time.perf_counter() - t0
    finally:
        for s in seqs:
            await engine.close(s)
    return sum(counts) / elapsed


async def run_engine_bench(
    engine: Engine,
    *,
    context_tokens: int = 2048,
    delta_tokens: int = 16,
    decode_tokens: int = 32,
    streams: tuple[int, ...] = (1, 4, 8),
    repeats: int = 3,
    seed: int | None = None,
) -> EngineBenchResult:
    """Measure re-prefill vs append, prefix reuse, fork, and decode tokens/s at each stream count (sampled too
    at 1 and 4)."""
    if context_tokens + delta_tokens * (repeats + 1) > engine.max_model_len:
        raise InvalidTokensError(f"context_tokens={context_tokens} plus {repeats + 1} appends of {delta_tokens} "
                                 f"do not fit the model's {engine.max_model_len} tokens: lower --context")
    # A fresh seed per run keeps the re-prefill cold even when the same engine is benched twice.
    rng = random.Random(time.time_ns() if seed is None else seed)
    vocab = _vocab_size(engine)
    avoid = frozenset(engine.eos_token_ids)
    context = _random_tokens(rng, context_tokens, vocab, avoid)
    delta = _random_tokens(rng, delta_tokens, vocab, avoid)

    # Warm-up: the first forward passes pay one-off costs (allocator, kernel selection).
    warm = await engine.open(_random_tokens(rng, 64, vocab, avoid))
    await engine.append(warm, delta)
    await engine.close(warm)

    # Re-prefill: what a stateless server pays to extend a conversation by delta tokens.
    t0 = time.perf_counter()
    cold = await engine.open(context + delta)
    reprefill_ms = (time.perf_counter() - t0) * 1e3
    reprefill_computed = engine.seq_stats(cold).prefill_computed
    await engine.close(cold)

    # Append: the live sequence already holds the context; only delta is computed. Setting it up reuses the
    # blocks the re-prefill left in the prefix cache, which is not what is timed.
    live = await engine.open(context)
    append_times: list[float] = []
    computed: list[int] = []
    try:
        for _ in range(repeats):
            before = engine.seq_stats(live).prefill_computed
            t0 = time.perf_counter()
            await engine.append(live, delta)
            append_times.append((time.perf_counter() - t0) * 1e3)
            computed.append(engine.seq_stats(live).prefill_computed - before)

        t0 = time.perf_counter()
        child = await engine.fork(live)
        fork_ms = (time.perf_counter() - t0) * 1e3
        fork_computed = engine.seq_stats(child).prefill_computed
        await engine.close(child)
    finally:
        await engine.close(live)

    # Prefix reuse: a new sequence whose first context_tokens are cached (another agent, same system prompt).
    other = _random_tokens(rng, delta_tokens, vocab, avoid)
    t0 = time.perf_counter()
    shared = await engine.open(context + other)
    prefix_open_ms = (time.perf_counter() - t0) * 1e3
    shared_stats = engine.seq_stats(shared)
    await engine.close(shared)

    rates: dict[int, float] = {}
    sampled: dict[int, float] = {}
    for n in sorted(set(streams) | {1, 4}):
        prompts = [_random_tokens(rng, 32, vocab, avoid) for _ in range(n)]
        rates[n] = await _decode_rate(engine, prompts, decode_tokens)
        if n in (1, 4):  # at once after the greedy run, so both meet the same machine load
            prompts = [_random_tokens(rng, 32, vocab, avoid) for _ in range(n)]
            sampled[n] = await _decode_rate(engine, prompts, decode_tokens, SAMPLED)

    append_ms = statistics.median(append_times)
    return EngineBenchResult(
        reprefill_ms=round(reprefill_ms, 2),
        append_ms=round(append_ms, 2),
        append_speedup=round(reprefill_ms / append_ms, 2),
        append_tokens_computed=max(computed),
        tok_s_1=round(rates[1], 2),
        tok_s_4=round(rates[4], 2),
        batch_speedup=round(rates[4] / rates[1], 2),
        model=engine.model_name,
        context_tokens=context_tokens,
        delta_tokens=delta_tokens,
        decode_tokens_per_stream=decode_tokens,
        reprefill_tokens_computed=reprefill_computed,
        prefix_open_ms=round(prefix_open_ms, 2),
        prefix_open_tokens_computed=shared_stats.prefill_computed,
        prefix_open_tokens_reused=shared_stats.prefill_reused,
        fork_ms=round(fork_ms, 2),
        fork_tokens_computed=fork_computed,
        tok_s={n: round(r, 2) for n, r in rates.items()},
        sampled_tok_s_1=round(sampled[1], 2),
        sampled_tok_s_4=round(sampled[4], 2),
        sampled_vs_greedy_1=round(sampled[1] / rates[1], 2),
        sampled_vs_greedy_4=round(sampled[4] / rates[4], 2),
    )


Backend = Literal["transformers", "llamacpp"]


def bench_engine(model: str | None = None, *, backend: Backend = "transformers", peer: bool = True,
                 **kwargs: Any) -> EngineBenchResult:
    """Load the model (default: the offline default) on the backend's engine and run the bench.

    With `peer`, a GGUF model (the default one included) is also served by llama.cpp's own server and driven
    with 1 and 4 concurrent requests of the same length: the peer columns.
    """
    from engine.llamacpp_engine import accepts_model, model_path

    async def main() -> EngineBenchResult:
        engine: Engine
        if backend == "llamacpp":
            from engine.llamacpp_engine import LlamaCppEngine

            engine = LlamaCppEngine(model)
        else:
            from engine.transformers_engine import TransformersEngine

            engine = TransformersEngine.from_pretrained(model)
        try:
            return await run_engine_bench(engine, **kwargs)
        finally:
            await engine.shutdown()

    result = asyncio.run(main())
    result.backend = backend
    if peer and accepts_model(model):
        from engine.llama_server import peer_rates

        rates = peer_rates(model_path(model), kwargs.get("decode_tokens", 32))
        result.peer_tok_s_1, result.peer_tok_s_4 = round(rates[1], 2), round(rates[4], 2)
        result.tok_s_4_vs_peer = round(result.tok_s_4 / rates[4], 2)
    return result
