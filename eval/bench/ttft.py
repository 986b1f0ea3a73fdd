"""The TTFT bench: one question through every mode on the same agents, proposers writing a fixed length.

Speed means little if an answer is cut short, so each mode's answer length and finish reason are reported, the
total-time ratio to classic is taken at equal answer length (the time to the N-th answer token, N the shorter of
the two answers), and a mode whose answer is under 80% of classic's is flagged. Each mode also reports its answer
tokens/s after the first token and its proposers' decode tokens/s together. With a peer (`--peer`), the same
classic MoA runs as a client of llama.cpp's own server on the same GGUF (eval/bench/peer_moa.py), after our modes,
so that the two never share the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_stream import (
    LAYOUT_MODES,
    AggregatorDelta,
    ConfigError,
    Done,
    LlamaCppBackend,
    Metrics,
    MoA,
    MoAConfig,
    ProposerDelta,
    TransformersBackend,
    layout_class,
)

from .peer_moa import PeerRun, answer_rate, classic_over_http

DEFAULT_QUESTION = "Explain how vaccines train the immune system, with examples."
SHORT_ANSWER_FRACTION = 0.8  # an answer under this fraction of classic's length is flagged


def bench_config(config: MoAConfig, proposer_tokens: int, answer_tokens: int, ignore_eos: bool = True) -> MoAConfig:
    """The config with every proposer writing `proposer_tokens` (exactly, unless `ignore_eos` is False: then at
    most) and the answer capped."""
    layers = [[a.model_copy(update={"max_tokens": proposer_tokens, "ignore_eos": ignore_eos}) for a in layer]
              for layer in config.layers]
    aggregator = config.aggregator.model_copy(update={"max_tokens": answer_tokens})
    return config.model_copy(update={"layers": layers, "aggregator": aggregator})


def layered(config: MoAConfig, layers: int) -> MoAConfig:
    """The config with its last proposer layer repeated `layers` times (names `name@L<k>` after the first), every
    later layer reading the one before it the turn's way (layer_modes unset: classic waits, staircase streams)."""
    base = config.layers[-1]
    stack = [[a if k == 0 else a.model_copy(update={"name": f"{a.name}@L{k}"}) for a in base] for k in range(layers)]
    return config.model_copy(update={"layers": stack, "layer_modes": None})


def bench_modes() -> list[str]:
    """Every mode with a layout of its own (an alias such as `staircase` runs once, under the alias); the debate
    modes run other agents (`bench debate`)."""
    seen: set[type] = set()
    out = []
    for mode in LAYOUT_MODES:
        cls = layout_class(mode)
        if cls not in seen:
            seen.add(cls)
            out.append(mode)
    return out


@dataclass
class TimedRun:
    """One run's metrics and the time (since the turn started) at which each shown answer token arrived."""

    metrics: Metrics
    answer: str
    token_times: list[float] = field(default_factory=list)
    proposer_span: tuple[float, float] | None = None  # first and last proposer delta (seconds since the start)

    def time_to(self, n: int) -> float:
        """Seconds to the n-th shown answer token (the turn's total time when n is 0)."""
        return self.token_times[n - 1] if n > 0 else self.metrics.total_s


async def timed_run(moa: MoA, question: str, mode: str, cache_salt: str | None = None) -> TimedRun:
    """Run one turn, timing every shown answer token (text re-tokenized as it grows: ids as the user sees them).

    A cache_salt of its own keeps the run from the prefix-cache blocks of runs before it (a cold cache)."""
    tok = next(iter(moa.engines.values())).tokenizer
    text = ""
    times: list[float] = []
    span: list[float] = []
    # aclosing: the stream's agents are freed here, not by a finalizer that may run after the engine is shut.
    async with contextlib.aclosing(moa.stream(question, mode=mode, cache_salt=cache_salt)) as events:
        async for ev in events:
            if isinstance(ev, AggregatorDelta):
                text += ev.text
                n = len(tok.encode(text, add_special_tokens=False))
                times.extend([ev.t] * (n - len(times)))
                del times[n:]
            elif isinstance(ev, ProposerDelta):
                span[1:] = [ev.t]
                span[:1] = span[:1] or [ev.t]
            elif isinstance(ev, Done):
                return TimedRun(ev.metrics, ev.answer, times, (span[0], span[-1]) if span else None)
    raise RuntimeError("the turn ended without a Done event")


def proposer_rate(run: TimedRun) -> float | None:
    """Every proposer's decode tokens/s together, from the first proposer delta to the last (None: no proposers)."""
    tokens = sum(a.completion_tokens for a in run.metrics.agents.values() if a.role == "proposer")
    if run.proposer_span is None or tokens == 0 or run.proposer_span[1] <= run.proposer_span[0]:
        return None
    return tokens / (run.proposer_span[1] - run.proposer_span[0])


def _row(run: TimedRun) -> dict[str, Any]:
    m = run.metrics
    agg = next((a for a in m.agents.values() if a.role == "aggregator"), None)
    return {
        "layout": layout_class(m.mode).name,
        "ttft_s": m.ttft_s,
        "total_s": m.total_s,
        "answer_tokens": len(run.token_times),
        "aggregator_completion_tokens": m.answer_tokens,
        "finish_reason": agg.finish_reason if agg else None,
        "aggregator_prefill_computed": m.aggregator_prefill_computed,
        "aggregator_prefill_reused": m.aggregator_prefill_reused,
        "prefill_computed": m.prefill_computed,
        "chunks_ingested": m.chunks_ingested,
        "aggregator_tok_s": answer_rate(run.token_times),
        "proposer_tok_s": proposer_rate(run),
        "proposer_holds": m.proposer_holds,
        "proposer_max_lead_chunks": m.proposer_max_lead_chunks,
    }


def compare(runs: dict[str, TimedRun]) -> dict[str, dict[str, Any]]:
    """Each mode's row with its ratios to classic (TTFT, and total time at equal answer length) and flags."""
    out = {mode: _row(run) for mode, run in runs.items()}
    classic, single = runs.get("classic"), runs.get("single")
    for mode, run in runs.items():
        row = out[mode]
        if classic is not None and mode != "classic":
            n = min(len(run.token_times), len(classic.token_times))
            row["equal_length_tokens"] = n
            row["time_to_equal_length_s"] = run.time_to(n)
            row["classic_time_to_equal_length_s"] = classic.time_to(n)
            row["total_ratio_vs_classic"] = run.time_to(n) / classic.time_to(n)
            row["answer_fraction_of_classic"] = len(run.token_times) / max(1, len(classic.token_times))
            row["short_answer"] = row["answer_fraction_of_classic"] < SHORT_ANSWER_FRACTION
            if run.metrics.ttft_s and classic.metrics.ttft_s:
                row["ttft_ratio_vs_classic"] = run.metrics.ttft_s / classic.metrics.ttft_s
        if single is not None and mode != "single" and run.metrics.ttft_s and single.metrics.ttft_s:
            row["ttft_ratio_vs_single"] = run.metrics.ttft_s / single.metrics.ttft_s
    stair = runs.get("staircase")
    if stair is not None and single is not None:
        n = min(len(stair.token_times), len(single.token_times))
        out["staircase_total_vs_single"] = stair.time_to(n) / single.time_to(n)  # at equal answer length
    return out


def compare_peer(out: dict[str, Any], peer: PeerRun) -> dict[str, Any]:
    """`out` with the peer's classic run and our classic's and staircase's TTFT as fractions of its TTFT."""
    out["peer_classic"] = peer.to_dict()
    for mode in ("classic", "staircase"):
        ours = out.get(mode, {}).get("ttft_s")
        out[f"{mode}_vs_peer_ttft"] = ours / peer.ttft_s if ours and peer.ttft_s else None
    return out


def peer_gguf(config: MoAConfig, model: str | None = None) -> tuple[Path, int]:
    """The GGUF and threads llama.cpp's server runs for the peer: the aggregator backend's (or `model`, the
    override our engines were built with), which must be one."""
    from engine.llamacpp_engine import accepts_model, default_threads, model_path

    backend = config.backends[config.aggregator.backend]
    name = model or getattr(backend, "model", None)
    if isinstance(backend, LlamaCppBackend | TransformersBackend) and accepts_model(name):
        threads = backend.threads if isinstance(backend, LlamaCppBackend) else None
        return model_path(name), threads or default_threads()
    raise ConfigError("--peer runs llama.cpp's server on the aggregator's GGUF: give a llamacpp backend (or the "
                      "default model), or leave --peer out")


async def run_peer(config: MoAConfig, question: str, tokenizer: Any, model: str | None = None) -> PeerRun:
    """Start llama.cpp's server on the config's GGUF, run classic MoA against it (after a warm-up), stop it."""
    from engine.llama_server import start_server

    gguf, threads = peer_gguf(config, model)
    server = await asyncio.to_thread(start_server, gguf, threads)
    try:
        warm = config.model_copy(update={"layers": [[a.model_copy(update={"max_tokens": 4, "ignore_eos": True})
                                                     for a in config.layers[-1]]],
                                         "aggregator": config.aggregator.model_copy(update={"max_tokens": 4})})
        await classic_over_http(server.base_url, warm, "Hi.", tokenizer)  # first-request costs, as our warm-up
        return await classic_over_http(server.base_url, config, question, tokenizer)
    finally:
        server.stop()


async def run_ttft_bench(moa: MoA, question: str = DEFAULT_QUESTION, repeats: int = 1,
                         warmup: bool = True, peer: bool = False, model: str | None = None,
                         modes: list[str] | None = None) -> dict[str, Any]:
    """TTFT, total time and answer completeness per mode (median run by TTFT), with ratios to classic.

    With `peer`, also classic MoA against llama.cpp's server on the same GGUF (`peer_classic` and the ratios to it);
    `model` is the model override the engines were built with, if any; `modes`: those to run (default: every one).
    """
    if peer:
        peer_gguf(moa.config, model)  # a config the peer cannot run fails before any mode runs
    if warmup:  # the first forward passes pay one-off costs that would land on whichever mode runs first
        await moa.run("Hi.", mode="single", max_tokens=4)
    runs: dict[str, TimedRun] = {}
    for mode in modes or bench_modes():
        timed = [await timed_run(moa, question, mode) for _ in range(repeats)]
        timed.sort(key=lambda r: r.metrics.ttft_s if r.metrics.ttft_s is not None else float("inf"))
        runs[mode] = timed[len(timed) // 2]
    out: dict[str, Any] = compare(runs)
    cfg = moa.config
    if peer:
        tok = next(iter(moa.engines.values())).tokenizer
        compare_peer(out, await run_peer(cfg, question, tok, model))
    out["setup"] = {
        "question": question,
        "layers": len(cfg.layers),
        "proposers": [a.name for layer in cfg.layers for a in layer],
        "proposer_tokens": [a.max_tokens for layer in cfg.layers for a in layer],
        "answer_tokens_max": cfg.aggregator.max_tokens,
        "staircase": cfg.staircase.model_dump(),
        "repeats": repeats,
        "short_answer_fraction": SHORT_ANSWER_FRACTION,
    }
    return out
