"""The layout-quality bench: each aggregator layout against classic on a fixed prompt set, at equal answer budget.

Every prompt runs through classic and through each incremental layout on the same agents (seeded proposers that
stop at their end of text, capped at the same length; the same greedy aggregator and answer budget), by the
public API. Per layout it reports the worst repeated 4-gram (the most times one 4-gram occurs in any answer),
rep-4 (repeated 4-gram fraction), answer length / classic's, ROUGE-L against classic's answer, TTFT / classic's,
and the aggregator's prefill computed: the worst over the prompts for the first, the mean for the others.

Every run starts from the same cache state, that of a server which has answered other questions before: on a
prefix-cache salt of its own, warmed by one turn of the same mode on another question. So the agents' system
prompts and the aggregator's head are cached and nothing of the question is (a run after another on the same
question would find its proposers' prompts cached).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from eval.bench.ttft import TimedRun, timed_run
from moa_stream import LAYOUTS, IncrementalLayout, MoA, layout_class, layout_for

from ..scorers import repeated_ngrams, rouge_l, worst_ngram_count

PROMPTS_FILE = Path(__file__).with_name("layout_prompts.jsonl")
BASELINE = "classic"
WARMUP_QUESTION = "Reply with the single word OK."  # short proposals: warming a run's cache takes seconds


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of the fixed set and its kind (list, explanation or short)."""

    kind: str
    prompt: str


def load_prompts(limit: int | None = None, path: Path = PROMPTS_FILE) -> list[BenchPrompt]:
    """The fixed prompt set (the first `limit` of it): kinds alternate, so a prefix covers each kind."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [BenchPrompt(r["kind"], r["prompt"]) for r in rows[:limit]]


def incremental_layouts() -> list[str]:
    """The name of every registered incremental layout, once (an alias such as `staircase` is left out)."""
    seen: dict[type, str] = {}
    for cls in LAYOUTS.values():
        if isinstance(cls, type) and issubclass(cls, IncrementalLayout):
            seen.setdefault(cls, cls.name)
    return list(seen.values())


@dataclass(frozen=True)
class PromptFigures:
    """One layout's answer to one prompt, scored against classic's answer to it."""

    worst_4gram: int
    rep4: float
    length_vs_classic: float
    rouge_vs_classic: float
    ttft_vs_classic: float | None
    prefill_computed: int


def score_run(run: TimedRun, classic: TimedRun) -> PromptFigures:
    """The figures of one answer against classic's."""
    ttft, base_ttft = run.metrics.ttft_s, classic.metrics.ttft_s
    return PromptFigures(
        worst_4gram=worst_ngram_count(run.answer),
        rep4=repeated_ngrams(run.answer) or 0.0,  # under 4 words nothing can repeat
        length_vs_classic=len(run.token_times) / max(1, len(classic.token_times)),
        rouge_vs_classic=rouge_l(run.answer, classic.answer),
        ttft_vs_classic=ttft / base_ttft if ttft is not None and base_ttft else None,
        prefill_computed=run.metrics.aggregator_prefill_computed,
    )


def summarize(figures: Sequence[PromptFigures]) -> dict[str, Any]:
    """The worst (worst_4gram) or mean (the rest) of the per-prompt figures."""
    ttfts = [f.ttft_vs_classic for f in figures if f.ttft_vs_classic is not None]
    return {
        "worst_4gram": max(f.worst_4gram for f in figures),
        "rep4": mean(f.rep4 for f in figures),
        "length_vs_classic": mean(f.length_vs_classic for f in figures),
        "rouge_vs_classic": mean(f.rouge_vs_classic for f in figures),
        "ttft_vs_classic": mean(ttfts) if ttfts else None,
        "prefill_computed": mean(f.prefill_computed for f in figures),
    }


async def warm_run(moa: MoA, question: str, mode: str, salt: str) -> TimedRun:
    """One timed run on a cache salt of its own that one turn on another question warmed (see the docstring)."""
    salt = f"{salt}-{mode}"
    await moa.run(WARMUP_QUESTION, mode=mode, cache_salt=salt)
    return await timed_run(moa, question, mode, cache_salt=salt)


async def run_layout_bench(moa: MoA, prompts: Sequence[BenchPrompt], layouts: Sequence[str] | None = None,
                           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every prompt through classic and each layout; the JSON the `bench layouts` command prints.

    Each run's warming turn also takes the one-off costs of the first forward passes off the first timed run.
    `progress` gets one line per finished run (a long bench on a slow model shows where it is)."""
    names = [layout_class(n).name for n in (layouts or incremental_layouts())]
    figures: dict[str, list[PromptFigures]] = {n: [] for n in [BASELINE, *names]}
    answers: list[dict[str, Any]] = []
    for i, p in enumerate(prompts):
        classic = await warm_run(moa, p.prompt, BASELINE, f"layouts-{i}")
        row: dict[str, Any] = {"prompt": p.prompt, "kind": p.kind, "answers": {BASELINE: classic.answer},
                               "figures": {}}
        for name in [BASELINE, *names]:
            run = classic if name == BASELINE else await warm_run(moa, p.prompt, name, f"layouts-{i}")
            figures[name].append(score_run(run, classic))
            row["answers"][name] = run.answer
            row["figures"][name] = dataclasses.asdict(figures[name][-1]) | {"ttft_s": run.metrics.ttft_s}
            if progress:
                f = figures[name][-1]
                progress(f"prompt {i + 1}/{len(prompts)} {name}: {len(run.token_times)} tokens, worst 4-gram "
                         f"{f.worst_4gram}, ROUGE-L vs classic {f.rouge_vs_classic:.2f}")
        answers.append(row)
    cfg = moa.config
    kinds = dict.fromkeys(p.kind for p in prompts)
    return {
        "default_layout": layout_for("staircase", moa.engines[cfg.aggregator.backend]).name,
        "layouts": {n: summarize(f) for n, f in figures.items()},
        # The same figures per prompt kind: where classic's proposals are short, so is its wait.
        "by_kind": {k: {n: summarize([f for f, p in zip(fs, prompts, strict=True) if p.kind == k])
                        for n, fs in figures.items()} for k in kinds},
        "per_prompt": answers,  # each answer, and its figures (TTFT in seconds too)
        "setup": {"prompts": len(prompts), "proposers": [a.name for layer in cfg.layers for a in layer],
                  "proposer_tokens_max": [a.max_tokens for layer in cfg.layers for a in layer],
                  "answer_tokens_max": cfg.aggregator.max_tokens, "staircase": cfg.staircase.model_dump()},
    }
