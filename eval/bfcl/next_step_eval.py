"""`moa-stream eval --dataset bfcl-multi-turn:N --formats chat,thread,compact`: next-step accuracy per agent format.

Each (case, format, system) is one episode: every step of a BFCL multi-turn case predicted on one engine sequence
(eval/bfcl/next_step.py), written as one JSON line as it finishes, so an interrupted run resumes. The
summary gives per format and system the next-step accuracy (call match and effect match, Wilson 95% CI over
steps), prefill tokens computed per step and TTFT per step (normal 95% CI), and the episodes whose predicted
calls, replayed in order, reach BFCL's ground-truth end state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval.bfcl.next_step import Episode, predict_next_steps
from moa_stream import MoA
from moa_stream.tools import BfclCase

from ..report import Estimate, clustered_paired_delta, estimate
from .driver import DATASET, BfclEval, Keyed, read_rows, row_from_json, run_rows, same_engine
from .tables import markdown_table, rich_table

SYSTEMS = ("single", "moa")


def is_bfcl(name: str) -> bool:
    """Whether a --dataset name is a BFCL multi-turn dataset (`bfcl-multi-turn[-CATEGORY]`)."""
    return name == DATASET or name.startswith(DATASET + "-")


@dataclass
class StepRow:
    """One predicted step as stored."""

    step: int
    call_match: bool
    effect_match: bool
    prefill_computed: int
    appended: int
    cue_tokens: int
    context_tokens: int
    ttft_s: float | None
    expected: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, Any] | None = None
    reply: str = ""
    error: str | None = None
    proposals: list[str] = field(default_factory=list)


@dataclass
class EpisodeRow(Keyed):
    """One (case, format, system) episode: the JSONL schema."""

    case_id: str
    dataset: str
    format: str
    system: str
    prefix_tokens: int
    prefix_computed: int
    state_match: bool | None
    total_s: float
    steps: list[StepRow] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def of(cls, dataset: str, ep: Episode) -> EpisodeRow:
        """The row of a finished episode."""
        steps = [StepRow(s.step, s.call_match, s.effect_match, s.prefill_computed, s.appended, s.cue_tokens,
                         s.context_tokens, s.ttft_s, asdict(s.expected),
                         asdict(s.predicted) if s.predicted else None, s.reply, s.error, s.proposals)
                 for s in ep.steps]
        return cls(ep.case_id, dataset, ep.format, ep.system, ep.prefix_tokens, ep.prefix_computed, ep.state_match,
                   ep.total_s, steps)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EpisodeRow:
        """A row from its JSON object (unknown keys ignored)."""
        return row_from_json(cls, doc, "steps", StepRow)


def read_episodes(path: Path) -> list[EpisodeRow]:
    """Every complete row of a results file (a torn last line is skipped)."""
    return read_rows(path, EpisodeRow.from_dict)


@dataclass
class FormatSummary:
    """One (format, system) line of the report."""

    format: str
    system: str
    episodes: int
    steps: int
    call_match: Estimate
    effect_match: Estimate
    prefill_per_step: Estimate
    ttft_s: Estimate
    context_tokens: Estimate
    prefix_tokens: Estimate
    state_match: Estimate
    repeats_last_call: Estimate  # steps after the first whose prediction is the call just before it (a copy)
    errors: int


def _repeats(r: EpisodeRow) -> list[float]:
    return [float(s.predicted == prev.expected) for prev, s in zip(r.steps, r.steps[1:], strict=False)]


def summarize(rows: Sequence[EpisodeRow]) -> list[FormatSummary]:
    """Per (format, system) summaries, in the order they first appear."""
    groups: dict[tuple[str, str], list[EpisodeRow]] = {}
    for r in rows:
        groups.setdefault((r.format, r.system), []).append(r)
    out = []
    for (fmt, system), rs in groups.items():
        ok = [r for r in rs if not r.error]
        steps = [s for r in ok for s in r.steps]
        out.append(FormatSummary(
            fmt, system, len(ok), len(steps),
            estimate([float(s.call_match) for s in steps], proportion=True),
            estimate([float(s.effect_match) for s in steps], proportion=True),
            estimate([s.prefill_computed for s in steps]), estimate([s.ttft_s for s in steps]),
            estimate([s.context_tokens for s in steps]), estimate([r.prefix_tokens for r in ok]),
            estimate([None if r.state_match is None else float(r.state_match) for r in ok], proportion=True),
            estimate([x for r in ok for x in _repeats(r)], proportion=True), len(rs) - len(ok)))
    return out


@dataclass
class PairedSummary:
    """One format's `system - baseline` on the same steps: the difference in call and effect match."""

    format: str
    system: str
    baseline: str
    cases: int
    steps: int
    call_match: Estimate
    effect_match: Estimate


def compare(rows: Sequence[EpisodeRow], system: str = "moa", baseline: str = "single") -> list[PairedSummary]:
    """Per format, `system - baseline` paired step by step over the cases both played, with a 95% CI that resamples
    whole cases (an episode's steps are not independent)."""
    played = {r.key: r for r in rows if not r.error}
    out = []
    for fmt in dict.fromkeys(r.format for r in rows):
        pairs = []
        for (case, f, sys_), r in played.items():
            base = played.get((case, f, baseline))
            if f == fmt and sys_ == system and base is not None:
                by_step = {s.step: s for s in base.steps}
                pairs.append([(s, by_step[s.step]) for s in r.steps if s.step in by_step])
        if pairs:
            out.append(PairedSummary(
                fmt, system, baseline, len(pairs), sum(len(p) for p in pairs),
                clustered_paired_delta([[(float(a.call_match), float(b.call_match)) for a, b in p] for p in pairs]),
                clustered_paired_delta([[(float(a.effect_match), float(b.effect_match)) for a, b in p]
                                        for p in pairs])))
    return out


def _paired_columns() -> list[tuple[str, Any]]:
    return [("format", lambda p: p.format), ("difference", lambda p: f"{p.system} - {p.baseline}"),
            ("cases", lambda p: str(p.cases)), ("steps", lambda p: str(p.steps)),
            ("call match [95% CI]", lambda p: str(p.call_match)),
            ("effect match [95% CI]", lambda p: str(p.effect_match))]


def _columns() -> list[tuple[str, Any]]:
    def mean(e: Estimate, digits: int = 0) -> str:
        return "-" if e.mean is None else f"{e.mean:.{digits}f}"

    return [("format", lambda s: s.format), ("system", lambda s: s.system),
            ("episodes", lambda s: str(s.episodes)), ("steps", lambda s: str(s.steps)),
            ("call match [95% CI]", lambda s: str(s.call_match)),
            ("effect match [95% CI]", lambda s: str(s.effect_match)),
            ("prefill tokens / step [95% CI]", lambda s: str(s.prefill_per_step)),
            ("TTFT s / step [95% CI]", lambda s: str(s.ttft_s)),
            ("context tokens", lambda s: mean(s.context_tokens)), ("prefix tokens", lambda s: mean(s.prefix_tokens)),
            ("episode end state", lambda s: str(s.state_match)),
            ("repeats last call", lambda s: str(s.repeats_last_call)), ("errors", lambda s: str(s.errors))]


def table(summaries: Sequence[FormatSummary], title: str) -> Any:
    """A rich table of the summaries."""
    return rich_table(summaries, _columns(), title)


def markdown(summaries: Sequence[FormatSummary], paired: Sequence[PairedSummary] = ()) -> str:
    """The same table as Markdown, and the paired differences under it."""
    note = ("\nAccuracy CIs are Wilson intervals over steps; steps of one episode are not independent, so they are "
            "optimistic. Prefill tokens per step: the step's events appended to the main sequence plus every cue "
            "on a fork (the prefix is counted apart). TTFT: from appending the step's events to the first token of "
            "the scored call. Repeats last call: steps whose predicted call is the one the history ended with.\n")
    text = markdown_table(summaries, _columns()) + note
    if paired:
        text += ("\nPaired on the same steps; the CI resamples whole cases (percentile bootstrap), so it is wider "
                 "than the Wilson intervals above and honest about an episode's steps hanging together.\n\n"
                 + markdown_table(paired, _paired_columns()))
    return text


def plot(summaries: Sequence[FormatSummary], path: Path) -> Path:
    """Next-step accuracy (effect match) against prefill tokens computed per step, one point per format/system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def err(e: Estimate) -> list[list[float]]:
        assert e.mean is not None
        return [[e.mean - e.low if e.low is not None else 0.0], [e.high - e.mean if e.high is not None else 0.0]]

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for s in summaries:
        if s.effect_match.mean is None or s.prefill_per_step.mean is None:
            continue
        ax.errorbar(s.prefill_per_step.mean, s.effect_match.mean, xerr=err(s.prefill_per_step),
                    yerr=err(s.effect_match), fmt="s" if s.system == "single" else "o", capsize=3,
                    label=f"{s.format} / {s.system}")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("prefill tokens computed per step")
    ax.set_ylabel("next-step accuracy (effect match)")
    ax.set_title("BFCL multi-turn next step: accuracy vs tokens computed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


async def run(moa: MoA, cases: Sequence[tuple[str, BfclCase]], formats: Sequence[str], systems: Sequence[str],
              out: Path, max_tokens: int, progress: bool = True) -> int:
    """Run every (case, format, system) not yet in `out`, appending a row as each finishes; returns rows written."""
    same_engine(moa, systems, "the next-step MoA")
    cfg = moa.config
    engine = moa.engines[cfg.aggregator.backend]

    async def play(dataset: str, case: BfclCase, fmt: str, system: str) -> EpisodeRow:
        ep = await predict_next_steps(engine, case, fmt, aggregator=cfg.aggregator,
                                      proposers=cfg.layers[-1] if system == "moa" else (), max_tokens=max_tokens)
        return EpisodeRow.of(dataset, ep)

    def failed(dataset: str, case: BfclCase, fmt: str, system: str, why: str) -> EpisodeRow:
        return EpisodeRow(case.id, dataset, fmt, system, 0, 0, None, 0.0, error=why)

    done = {r.key for r in read_episodes(out)}
    return await run_rows(cases, formats, systems, out, done, play, failed, progress)


def write_report(out: Path, console: Any) -> int:
    """Summarise `out`/rows.jsonl: print the table, write summary.md, summary.json and plot.png beside it."""
    from rich.console import Console

    rows_path = out / "rows.jsonl"
    rows = read_episodes(rows_path)
    if not rows:
        console.print(f"moa-stream eval: no results in {rows_path}")
        return 1
    summaries, paired = summarize(rows), compare(rows)
    Console().print(table(summaries, f"BFCL next step by format ({len(rows)} episodes)"))
    if paired:
        Console().print(rich_table(paired, _paired_columns(), "MoA - single, paired by step (CI over cases)"))
    (out / "summary.md").write_text(markdown(summaries, paired), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2), encoding="utf-8")
    (out / "paired.json").write_text(json.dumps([asdict(p) for p in paired], indent=2), encoding="utf-8")
    plot(summaries, out / "plot.png")
    console.print(f"wrote {out / 'summary.md'}, {out / 'summary.json'}, {out / 'paired.json'} and {out / 'plot.png'}")
    return 0


NEXT_STEP = BfclEval("--systems for bfcl-multi-turn", SYSTEMS, run, write_report)
main = NEXT_STEP.main
