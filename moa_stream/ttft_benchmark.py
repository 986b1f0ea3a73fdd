"""The TTFT bench: one question through every mode on the same agents, proposers writing a fixed length.

Speed means little if an answer is cut short, so each mode's answer length and finish reason are reported, the
total-time ratio to classic is taken at equal answer length (the time to the N-th answer token, N the shorter of
the two answers), and a mode whose answer is under 80% of classic's is flagged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from .api import MoA
from .config import MoAConfig
from .events import MODES, AggregatorDelta, Done, Metrics
from .layouts import layout_class

DEFAULT_QUESTION = "Explain how vaccines train the immune system, with examples."
SHORT_ANSWER_FRACTION = 0.8  # an answer under this fraction of classic's length is flagged


def bench_config(config: MoAConfig, proposer_tokens: int, answer_tokens: int, ignore_eos: bool = True) -> MoAConfig:
    """The config with every proposer writing `proposer_tokens` (exactly, unless `ignore_eos` is False: then at
    most) and the answer capped."""
    layers = [[a.model_copy(update={"max_tokens": proposer_tokens, "ignore_eos": ignore_eos}) for a in layer]
              for layer in config.layers]
    aggregator = config.aggregator.model_copy(update={"max_tokens": answer_tokens})
    return config.model_copy(update={"layers": layers, "aggregator": aggregator})


def bench_modes() -> list[str]:
    """Every mode with a layout of its own (an alias such as `staircase` runs once, under the alias)."""
    seen: set[type] = set()
    out = []
    for mode in MODES:
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

    def time_to(self, n: int) -> float:
        """Seconds to the n-th shown answer token (the turn's total time when n is 0)."""
        return self.token_times[n - 1] if n > 0 else self.metrics.total_s


async def timed_run(moa: MoA, question: str, mode: str) -> TimedRun:
    """Run one turn, timing every shown answer token (text re-tokenized as it grows: ids as the user sees them)."""
    tok = next(iter(moa.engines.values())).tokenizer
    text = ""
    times: list[float] = []
    # aclosing: the stream's agents are freed here, not by a finalizer that may run after the engine is shut.
    async with contextlib.aclosing(moa.stream(question, mode=mode)) as events:
        async for ev in events:
            if isinstance(ev, AggregatorDelta):
                text += ev.text
                n = len(tok.encode(text, add_special_tokens=False))
                times.extend([ev.t] * (n - len(times)))
                del times[n:]
            elif isinstance(ev, Done):
                return TimedRun(ev.metrics, ev.answer, times)
    raise RuntimeError("the turn ended without a Done event")


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
    return out


async def run_ttft_bench(moa: MoA, question: str = DEFAULT_QUESTION, repeats: int = 1,
                         warmup: bool = True) -> dict[str, Any]:
    """TTFT, total time and answer completeness per mode (median run by TTFT), with ratios to classic."""
    if warmup:  # the first forward passes pay one-off costs that would land on whichever mode runs first
        await moa.run("Hi.", mode="single", max_tokens=4)
    runs: dict[str, TimedRun] = {}
    for mode in bench_modes():
        timed = [await timed_run(moa, question, mode) for _ in range(repeats)]
        timed.sort(key=lambda r: r.metrics.ttft_s if r.metrics.ttft_s is not None else float("inf"))
        runs[mode] = timed[len(timed) // 2]
    out: dict[str, Any] = compare(runs)
    cfg = moa.config
    out["setup"] = {
        "question": question,
        "proposers": [a.name for layer in cfg.layers for a in layer],
        "proposer_tokens": [a.max_tokens for layer in cfg.layers for a in layer],
        "answer_tokens_max": cfg.aggregator.max_tokens,
        "staircase": cfg.staircase.model_dump(),
        "repeats": repeats,
        "short_answer_fraction": SHORT_ANSWER_FRACTION,
    }
    return out
