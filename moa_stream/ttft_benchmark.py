"""The TTFT bench: one question through every mode on the same agents, proposers writing a fixed length."""

from __future__ import annotations

from typing import Any

from .api import MoA
from .config import MoAConfig
from .events import MODES, Metrics

DEFAULT_QUESTION = "Explain how vaccines train the immune system, with examples."


def bench_config(config: MoAConfig, proposer_tokens: int, answer_tokens: int) -> MoAConfig:
    """The config with every proposer writing exactly `proposer_tokens` and the answer capped."""
    layers = [[a.model_copy(update={"max_tokens": proposer_tokens, "ignore_eos": True}) for a in layer]
              for layer in config.layers]
    aggregator = config.aggregator.model_copy(update={"max_tokens": answer_tokens})
    return config.model_copy(update={"layers": layers, "aggregator": aggregator})


def _row(m: Metrics) -> dict[str, Any]:
    return {
        "ttft_s": m.ttft_s,
        "total_s": m.total_s,
        "aggregator_prefill_computed": m.aggregator_prefill_computed,
        "aggregator_prefill_reused": m.aggregator_prefill_reused,
        "prefill_computed": m.prefill_computed,
        "answer_tokens": m.answer_tokens,
        "chunks_ingested": m.chunks_ingested,
    }


async def run_ttft_bench(moa: MoA, question: str = DEFAULT_QUESTION, repeats: int = 1,
                         warmup: bool = True) -> dict[str, Any]:
    """TTFT and total time per mode (median over repeats), plus staircase's ratios to classic and single."""
    if warmup:  # the first forward passes pay one-off costs that would land on whichever mode runs first
        await moa.run("Hi.", mode="single", max_tokens=4)
    out: dict[str, Any] = {}
    for mode in MODES:
        runs = [(await moa.run(question, mode=mode)).metrics for _ in range(repeats)]
        runs.sort(key=lambda m: m.ttft_s if m.ttft_s is not None else float("inf"))
        out[mode] = _row(runs[len(runs) // 2])
    stair, classic, single = out["staircase"], out["classic"], out["single"]
    if stair["ttft_s"] and classic["ttft_s"] and single["ttft_s"]:
        stair["ttft_ratio_vs_classic"] = stair["ttft_s"] / classic["ttft_s"]
        stair["ttft_ratio_vs_single"] = stair["ttft_s"] / single["ttft_s"]
        stair["total_ratio_vs_classic"] = stair["total_s"] / classic["total_s"]
    cfg = moa.config
    out["setup"] = {
        "question": question,
        "proposers": [a.name for layer in cfg.layers for a in layer],
        "proposer_tokens": [a.max_tokens for layer in cfg.layers for a in layer],
        "answer_tokens_max": cfg.aggregator.max_tokens,
        "staircase": cfg.staircase.model_dump(),
        "repeats": repeats,
    }
    return out
