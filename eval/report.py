"""Summaries of a results file: means with 95% confidence intervals, a rich table, a quality-vs-TTFT plot, and
the negative control: a run that cannot tell `classic` from `single` makes no quality claim for the staircase."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moa_stream import MODES

from .rows import Row
from .scorers import rouge_l

MIN_PAIRS = 5  # fewer paired samples than this never count as separating two systems
LOGLIK = "-loglik"  # the dataset suffix of option log-likelihood rows (eval.runner.LOGLIK)


@dataclass
class Estimate:
    """A mean and its 95% confidence interval [low, high]."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def __str__(self) -> str:
        if self.mean is None:
            return "-"
        if self.low is None or self.high is None:
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def contains(self, x: float) -> bool:
        """Whether x lies inside the interval."""
        return self.low is not None and self.high is not None and self.low <= x <= self.high


_Z = 1.959964  # two-sided 95%


def estimate(values: Sequence[float | None], proportion: bool = False) -> Estimate:
    """Mean and 95% CI of the non-missing values: Wilson's interval for a proportion of 0/1 scores, else normal."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if not xs:
        return Estimate(None, None, None, 0)
    mean = statistics.fmean(xs)
    if proportion and all(x in (0.0, 1.0) for x in xs):
        # Wilson: an all-wrong (or all-right) sample still gets an interval of honest width.
        centre = (mean + _Z**2 / (2 * n)) / (1 + _Z**2 / n)
        half = _Z * math.sqrt(mean * (1 - mean) / n + _Z**2 / (4 * n * n)) / (1 + _Z**2 / n)
        return Estimate(mean, max(0.0, centre - half), min(1.0, centre + half), n)
    if n == 1:
        return Estimate(mean, None, None, 1)
    half = _Z * statistics.stdev(xs) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired_delta(pairs: Sequence[tuple[float, float]], resamples: int = 4000, seed: int = 0) -> Estimate:
    """Mean of (a - b) over paired samples with a percentile-bootstrap 95% CI (deterministic seed)."""
    return clustered_paired_delta([[p] for p in pairs], resamples, seed)


def clustered_paired_delta(groups: Sequence[Sequence[tuple[float, float]]], resamples: int = 4000,
                           seed: int = 0) -> Estimate:
    """Mean of (a - b) over every pair, the bootstrap resampling whole groups: pairs that are not independent of
    each other (the steps of one episode) go in one group, so the CI is not narrowed by counting them apart."""
    diffs = [[a - b for a, b in g] for g in groups if g]
    flat = [d for g in diffs for d in g]
    if not flat:
        return Estimate(None, None, None, 0)
    rng = random.Random(seed)
    means = sorted(statistics.fmean([d for g in rng.choices(diffs, k=len(diffs)) for d in g])
                   for _ in range(resamples))
    return Estimate(statistics.fmean(flat), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1],
                    len(flat))


@dataclass
class SystemSummary:
    """One system's line in the report."""

    system: str
    mode: str
    chunk: int | None
    samples: int
    quality: Estimate
    ttft_s: Estimate
    total_s: Estimate
    delta_vs_classic: Estimate  # paired quality difference against classic on the same samples
    agreement_with_classic: Estimate  # ROUGE-L against classic's answer to the same sample
    win_vs_classic: Estimate  # the judge's pairwise win rate against classic (open-ended samples only)
    errors: int
    per_dataset: dict[str, Estimate]  # quality on each dataset (log-likelihood accuracy on "<name>-loglik")
    answer_tokens: Estimate  # generated answers' length
    rep4: Estimate  # repeated word 4-gram fraction of the generated answers (0: no loop)
    distinct2: Estimate  # distinct word bigrams / all bigrams (1: no repetition)
    p_correct: Estimate  # log-likelihood rows: softmax over the options' log-likelihoods at the correct one
    not_available: int = 0  # rows whose measure the engine cannot give (log-likelihood on a remote engine)


def _generated(r: Row) -> bool:
    return not r.dataset.endswith(LOGLIK)


def summarize(rows: Sequence[Row]) -> list[SystemSummary]:
    """Per-system summaries: modes in MODES order, then by chunk size (rows come in a random order)."""
    classic = {r.sample_id: r for r in rows if r.mode == "classic" and not r.error}
    by_system: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_system[r.system].append(r)
    out = []
    for name, everything in by_system.items():
        rs = [r for r in everything if _generated(r)]  # quality, TTFT and length are the generated answers'
        ll = [r for r in everything if not _generated(r)]
        agree = [rouge_l(r.answer, classic[r.sample_id].answer) for r in rs if r.sample_id in classic]
        pairs = [(r.score, base.score) for r in rs
                 if (base := classic.get(r.sample_id)) is not None and r.score is not None and base.score is not None]
        ok = [r for r in rs if not r.error]
        out.append(SystemSummary(
            system=name, mode=everything[0].mode, chunk=everything[0].chunk, samples=len(rs),
            quality=estimate([r.score for r in rs], proportion=True), ttft_s=estimate([r.ttft_s for r in rs]),
            total_s=estimate([r.total_s for r in rs]), delta_vs_classic=paired_delta(pairs),
            agreement_with_classic=estimate(agree),
            win_vs_classic=estimate([r.scores.get("judge_win_vs_classic") for r in rs]),
            errors=sum(1 for r in everything if r.error),
            per_dataset={d: estimate([r.score for r in everything if r.dataset == d], proportion=True)
                         for d in dict.fromkeys(r.dataset for r in everything)},
            answer_tokens=estimate([r.answer_tokens for r in ok]),
            rep4=estimate([r.rep4 for r in ok]), distinct2=estimate([r.distinct2 for r in ok]),
            p_correct=estimate([r.scores.get("p_correct") for r in ll if not r.error]),
            not_available=sum(1 for r in everything if r.na)))
    rank = {m: i for i, m in enumerate(MODES)}
    return sorted(out, key=lambda s: (rank.get(s.mode, len(rank)), s.chunk or 0))


@dataclass
class Comparison:
    """A system against a baseline on one measure: the paired difference (system - baseline) and its verdict."""

    system: str
    measure: str
    delta: Estimate
    mean_in_baseline_ci: bool  # the system's mean lies inside the baseline's 95% CI

    @property
    def enough(self) -> bool:
        """Whether there are enough pairs for the bootstrap CI to mean anything (with 1-4 it is degenerate)."""
        return self.delta.n >= MIN_PAIRS

    @property
    def separated(self) -> bool:
        """Whether the paired 95% CI of the difference excludes 0 (on at least MIN_PAIRS pairs)."""
        return self.enough and self.delta.low is not None and self.delta.high is not None \
            and not self.delta.contains(0.0)


def _measures(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Measure name -> the rows it is taken on: each dataset's headline score, and p(correct) of log-likelihood."""
    out: dict[str, list[Row]] = {}
    for d in dict.fromkeys(r.dataset for r in rows):
        rs = [r for r in rows if r.dataset == d and not r.na]
        if any(r.score is not None for r in rs):
            out[f"{d} accuracy" if d.endswith(LOGLIK) else f"{d} quality"] = rs
        if d.endswith(LOGLIK) and any("p_correct" in r.scores for r in rs):
            out[f"{d} p(correct)"] = rs
    return out


def _value(r: Row, measure: str) -> float | None:
    return r.scores.get("p_correct") if measure.endswith("p(correct)") else r.score


def compare(rows: Sequence[Row], system: str, baseline: str = "classic") -> list[Comparison]:
    """`system` against `baseline` on every measure both have, paired by sample (bootstrap 95% CI)."""
    out = []
    for measure, rs in _measures(rows).items():
        base = {r.sample_id: _value(r, measure) for r in rs if r.system == baseline and not r.error}
        mine = {r.sample_id: _value(r, measure) for r in rs if r.system == system and not r.error}
        pairs = [(v, base[k]) for k, v in mine.items() if v is not None and base.get(k) is not None]
        if not pairs:
            continue
        base_est = estimate([b for _, b in pairs], proportion=True)
        mean = statistics.fmean(a for a, _ in pairs)
        out.append(Comparison(system, measure, paired_delta(pairs), base_est.contains(mean)))
    return out


def verdict(rows: Sequence[Row]) -> str:
    """The negative control and, only where it separates classic from single, the staircase quality claims."""
    systems = [s.system for s in summarize(rows)]
    if "classic" not in systems or "single" not in systems:
        return "Negative control: needs both `single` and `classic` in the run; no quality claim is made.\n"
    control = compare(rows, "classic", baseline="single")
    lines = ["### Negative control: does this run tell `classic` from `single`?", "",
             "| measure | classic - single [paired 95% CI] | separated |", "|---|---:|---|"]
    lines += [f"| {c.measure} | {c.delta} | {'yes' if c.separated else 'no' if c.enough else 'too few pairs'} |"
              for c in control]
    separated = [c.measure for c in control if c.separated]
    lines.append("")
    if not separated:
        lines.append("No measure separates classic from single, so this run supports **no** claim that a "
                     "streaming layout keeps (or loses) classic's quality.")
        return "\n".join(lines) + "\n"
    lines += [f"Separated on: {', '.join(separated)}. Quality claims are made on these measures only.", "",
              "### Streaming systems against classic (separated measures)", "",
              "| system | measure | system - classic [paired 95% CI] | mean inside classic's 95% CI |",
              "|---|---|---:|---|"]
    for name in systems:
        if name in ("classic", "single"):
            continue
        for c in compare(rows, name):
            if c.measure in separated:
                lines.append(f"| {name} | {c.measure} | {c.delta} | {'yes' if c.mean_in_baseline_ci else 'no'} |")
    return "\n".join(lines) + "\n"


def _columns(summaries: Sequence[SystemSummary]) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = [
        ("system", lambda s: s.system), ("n", lambda s: str(s.samples)),
        ("quality [95% CI]", lambda s: str(s.quality)),
        ("Δ quality vs classic [paired 95% CI]", lambda s: str(s.delta_vs_classic)),
        ("TTFT s [95% CI]", lambda s: str(s.ttft_s)),
        ("total s", lambda s: "-" if s.total_s.mean is None else f"{s.total_s.mean:.2f}"),
        ("ROUGE-L vs classic", lambda s: str(s.agreement_with_classic)),
        ("answer tokens", lambda s: _mean(s.answer_tokens, 1)),
        ("rep-4", lambda s: _mean(s.rep4, 3)), ("distinct-2", lambda s: _mean(s.distinct2, 3))]
    if any(s.p_correct.n or s.not_available for s in summaries):
        cols.append(("loglik p(correct)", lambda s: "n/a" if s.not_available and not s.p_correct.n
                     else str(s.p_correct)))
    if any(s.win_vs_classic.n for s in summaries):
        cols.append(("judge win vs classic", lambda s: str(s.win_vs_classic)))
    datasets = list(dict.fromkeys(d for s in summaries for d in s.per_dataset))
    if len(datasets) > 1:
        cols += [(f"{d} accuracy" if d.endswith(LOGLIK) else f"{d} quality",
                  lambda s, d=d: _cell(s, d)) for d in datasets]
    cols.append(("errors", lambda s: str(s.errors)))
    return cols


def _mean(e: Estimate, digits: int) -> str:
    return "-" if e.mean is None else f"{e.mean:.{digits}f}"


def _cell(s: SystemSummary, dataset: str) -> str:
    e = s.per_dataset.get(dataset, Estimate(None, None, None, 0))
    return "n/a" if e.n == 0 and dataset.endswith(LOGLIK) and s.not_available else str(e)


def table(summaries: Sequence[SystemSummary], title: str = "quality vs TTFT") -> Any:
    """A rich table of the summaries."""
    from rich.table import Table

    t = Table(title=title)
    cols = _columns(summaries)
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "system" else "right", no_wrap=name == "system")
    for s in summaries:
        t.add_row(*(cell(s) for _, cell in cols))
    return t


def markdown(summaries: Sequence[SystemSummary]) -> str:
    """The same table as Markdown, for README and results folders."""
    cols = _columns(summaries)
    lines = ["| " + " | ".join(name for name, _ in cols) + " |",
             "|---|" + "---:|" * (len(cols) - 1)]
    lines += ["| " + " | ".join(cell(s) for _, cell in cols) + " |" for s in summaries]
    return "\n".join(lines) + "\n"


def plot(summaries: Sequence[SystemSummary], path: Path, title: str = "quality vs time to first token") -> Path:
    """Mean quality against mean TTFT (95% CI bars), one point per system, as a PNG; with log-likelihood rows a
    second panel shows p(correct) of the options scored at the answer start against the same TTFT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    def err(e: Estimate) -> list[list[float]]:
        assert e.mean is not None
        return [[e.mean - e.low if e.low is not None else 0.0], [e.high - e.mean if e.high is not None else 0.0]]

    panels: list[tuple[str, Any]] = [("mean quality score (generated answers)", lambda s: s.quality)]
    if any(s.p_correct.n for s in summaries):
        panels.append(("mean p(correct option), log-likelihood at answer start", lambda s: s.p_correct))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels) + 2.5, 4.5), dpi=120, squeeze=False)
    classic = next((s for s in summaries if s.mode == "classic"), None)
    for ax, (ylabel, measure) in zip(axes[0], panels, strict=True):
        base = measure(classic) if classic is not None else None
        if base is not None and base.low is not None and base.high is not None:
            # The band a system's mean must fall in to count as "as good as classic".
            ax.axhspan(base.low, base.high, color="tab:gray", alpha=0.15, label="classic's 95% CI")
        for i, s in enumerate(summaries):
            e = measure(s)
            if e.mean is None or s.ttft_s.mean is None:
                continue
            marker = {"single": "s", "classic": "D", "staircase-reprefill": "^", "blocks": "v"}.get(s.mode, "o")
            ax.errorbar(s.ttft_s.mean, e.mean, xerr=err(s.ttft_s), yerr=err(e), fmt=marker, capsize=3,
                        label=s.system, color=plt.get_cmap("tab20")(i % 20))  # the default cycle has only 10
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("mean time to first token (s, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # outside: points overlap
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def as_json(summaries: Sequence[SystemSummary]) -> list[dict[str, Any]]:
    """Summaries as plain dicts (summary.json)."""
    return [asdict(s) for s in summaries]
