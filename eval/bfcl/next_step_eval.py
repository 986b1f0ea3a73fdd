"""`moa-stream eval --dataset bfcl-multi-turn:N --formats chat,thread,compact`: next-step accuracy per agent format.

Each (case, format, system) is one episode: every step of a BFCL multi-turn case predicted on one engine sequence
(eval/bfcl/next_step.py), written as one JSON line as it finishes, so an interrupted run resumes. The
summary gives per format and system the next-step accuracy (call match and effect match, Wilson 95% CI over
steps), prefill tokens computed per step and TTFT per step (normal 95% CI), and the episodes whose predicted
calls, replayed in order, reach BFCL's ground-truth end state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from eval.bfcl.next_step import Episode, predict_next_steps
from eval.bfcl.traces import load_cases
from moa_stream import AGENT_FORMATS, ConfigError, MoA, MoAConfig, MoAStreamError
from moa_stream.tools import BfclCase

from ..progress import progress_bar
from ..report import Estimate, estimate
from ..rows import drop_torn_tail
from .tables import markdown_table, rich_table

DATASET = "bfcl-multi-turn"
SYSTEMS = ("single", "moa")


def is_bfcl(name: str) -> bool:
    """Whether a --dataset name is the BFCL multi-turn next-step dataset (`bfcl-multi-turn[-CATEGORY]`)."""
    return name == DATASET or name.startswith(DATASET + "-")


def category(name: str) -> str:
    """The BFCL multi-turn category a dataset name picks (base unless it says `bfcl-multi-turn-long_context`)."""
    return name.removeprefix(DATASET).lstrip("-") or "base"


def pick_cases(name: str, limit: int | None, seed: int) -> list[BfclCase]:
    """A deterministic random subset of `limit` cases with `seed`, in dataset order (as the other datasets)."""
    cases = load_cases(category(name))
    if limit is None or limit >= len(cases):
        return cases
    return [cases[i] for i in sorted(random.Random(seed).sample(range(len(cases)), limit))]


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
class EpisodeRow:
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
        known = {f.name for f in fields(cls)}
        step_known = {f.name for f in fields(StepRow)}
        values = {k: v for k, v in doc.items() if k in known}
        values["steps"] = [StepRow(**{k: v for k, v in s.items() if k in step_known}) for s in doc.get("steps", [])]
        return cls(**values)

    @property
    def key(self) -> tuple[str, str, str]:
        """What a resumed run skips: (case, format, system)."""
        return self.case_id, self.format, self.system


def read_episodes(path: Path) -> list[EpisodeRow]:
    """Every complete row of a results file (a torn last line is skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(EpisodeRow.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


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


def markdown(summaries: Sequence[FormatSummary]) -> str:
    """The same table as Markdown."""
    note = ("\nAccuracy CIs are Wilson intervals over steps; steps of one episode are not independent, so they are "
            "optimistic. Prefill tokens per step: the step's events appended to the main sequence plus every cue "
            "on a fork (the prefix is counted apart). TTFT: from appending the step's events to the first token of "
            "the scored call. Repeats last call: steps whose predicted call is the one the history ended with.\n")
    return markdown_table(summaries, _columns()) + note


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


def parse_list(spec: str, known: Sequence[str], what: str) -> list[str]:
    """A comma-separated list, each item checked against `known`."""
    items = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in items if p not in known]
    if bad or not items:
        raise ConfigError(f"{what} must be a comma-separated list of {', '.join(known)}; got {spec!r}")
    return items


async def run(moa: MoA, cases: Sequence[tuple[str, BfclCase]], formats: Sequence[str], systems: Sequence[str],
              out: Path, max_tokens: int, progress: bool = True) -> int:
    """Run every (case, format, system) not yet in `out`, appending a row as each finishes; returns rows written."""
    cfg = moa.config
    engine = moa.engines[cfg.aggregator.backend]
    proposers = cfg.layers[-1]
    if "moa" in systems and any(moa.engines[p.backend] is not engine for p in proposers):
        raise ConfigError("the next-step MoA forks one sequence: every proposer must use the aggregator's engine")
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(out)
    done = {r.key for r in read_episodes(out)}
    todo = [(d, c, f, sy) for d, c in cases for f in formats for sy in systems if (c.id, f, sy) not in done]
    written = 0
    with progress_bar(len(todo), progress) as bar, out.open("a", encoding="utf-8") as f:
        for dataset, case, fmt, system in todo:
            bar.show(f"{case.id} {fmt} {system}")
            try:
                ep = await predict_next_steps(engine, case, fmt, aggregator=cfg.aggregator,
                                              proposers=proposers if system == "moa" else (), max_tokens=max_tokens)
                row = EpisodeRow.of(dataset, ep)
            except MoAStreamError as exc:
                row = EpisodeRow(case.id, dataset, fmt, system, 0, 0, None, 0.0, error=str(exc))
            f.write(json.dumps(asdict(row)) + "\n")
            f.flush()  # a row on disk is an episode a resumed run skips
            written += 1
            bar.advance()
    return written


def main(args: argparse.Namespace, datasets: Sequence[tuple[str, int | None]]) -> int:
    """Run (or resume) the next-step eval, then write summary.md, summary.json and plot.png beside rows.jsonl."""
    from rich.console import Console

    console = Console(stderr=True)
    out = Path(args.out)
    rows_path = out / "rows.jsonl"
    if not args.report_only:
        try:
            formats = parse_list(args.formats, list(AGENT_FORMATS), "--formats")
            systems = parse_list(args.systems or "single", SYSTEMS,
                                 "--systems for bfcl-multi-turn")
            cases = [(name, c) for name, n in datasets for c in pick_cases(name, n, args.seed)]
            cfg = MoAConfig.load(args.config)
        except (MoAStreamError, ValueError) as exc:
            console.print(f"moa-stream eval: {exc}")
            return 2

        async def go() -> int:
            moa = MoA.from_config(cfg, model=args.model)
            try:
                return await run(moa, cases, formats, systems, rows_path, args.call_tokens,
                                 progress=not args.no_progress)
            finally:
                await moa.aclose()

        try:
            written = asyncio.run(go())
        except ConfigError as exc:
            console.print(f"moa-stream eval: {exc}")
            return 2
        console.print(f"{written} new rows in {rows_path}")
    return write_report(out, console)


def write_report(out: Path, console: Any) -> int:
    """Summarise `out`/rows.jsonl: print the table, write summary.md, summary.json and plot.png beside it."""
    from rich.console import Console

    rows_path = out / "rows.jsonl"
    rows = read_episodes(rows_path)
    if not rows:
        console.print(f"moa-stream eval: no results in {rows_path}")
        return 1
    summaries = summarize(rows)
    Console().print(table(summaries, f"BFCL next step by format ({len(rows)} episodes)"))
    (out / "summary.md").write_text(markdown(summaries), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2), encoding="utf-8")
    plot(summaries, out / "plot.png")
    console.print(f"wrote {out / 'summary.md'}, {out / 'summary.json'} and {out / 'plot.png'}")
    return 0
