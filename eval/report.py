"""Summaries of a results file: means with 95% confidence intervals, a rich table, a quality-vs-TTFT plot."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .rows import Row
from .scorers import rouge_l


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
    diffs = [a - b for a, b in pairs]
    if not diffs:
        return Estimate(None, None, None, 0)
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(resamples))
    return Estimate(statistics.fmean(diffs), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1], n)


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
    per_dataset: dict[str, Estimate]  # quality on each dataset


def summarize(rows: Sequence[Row]) -> list[SystemSummary]:
    """Per-system summaries, in the order systems first appear."""
    classic = {r.sample_id: r for r in rows if r.mode == "classic" and not r.error}
    by_system: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_system[r.system].append(r)
    out = []
    for name, rs in by_system.items():
        agree = [rouge_l(r.answer, classic[r.sample_id].answer) for r in rs if r.sample_id in classic]
        pairs = [(r.score, base.score) for r in rs
                 if (base := classic.get(r.sample_id)) is not None and r.score is not None and base.score is not None]
        out.append(SystemSummary(
            system=name, mode=rs[0].mode, chunk=rs[0].chunk, samples=len(rs),
            quality=estimate([r.score for r in rs], proportion=True), ttft_s=estimate([r.ttft_s for r in rs]),
            total_s=estimate([r.total_s for r in rs]), delta_vs_classic=paired_delta(pairs),
            agreement_with_classic=estimate(agree),
            win_vs_classic=estimate([r.scores.get("judge_win_vs_classic") for r in rs]),
            errors=sum(1 for r in rs if r.error),
            per_dataset={d: estimate([r.score for r in rs if r.dataset == d], proportion=True)
                         for d in dict.fromkeys(r.dataset for r in rs)}))
    return out


def _columns(summaries: Sequence[SystemSummary]) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = [
        ("system", lambda s: s.system), ("n", lambda s: str(s.samples)),
        ("quality [95% CI]", lambda s: str(s.quality)),
        ("Δ quality vs classic [paired 95% CI]", lambda s: str(s.delta_vs_classic)),
        ("TTFT s [95% CI]", lambda s: str(s.ttft_s)),
        ("total s", lambda s: "-" if s.total_s.mean is None else f"{s.total_s.mean:.2f}"),
        ("ROUGE-L vs classic", lambda s: str(s.agreement_with_classic))]
    if any(s.win_vs_classic.n for s in summaries):
        cols.append(("judge win vs classic", lambda s: str(s.win_vs_classic)))
    datasets = list(dict.fromkeys(d for s in summaries for d in s.per_dataset))
    if len(datasets) > 1:
        cols += [(f"{d} quality", lambda s, d=d: str(s.per_dataset.get(d, Estimate(None, None, None, 0))))
                 for d in datasets]
    cols.append(("errors", lambda s: str(s.errors)))
    return cols


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
    """Scatter of mean quality against mean TTFT (with 95% CI bars), one point per system, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def err(e: Estimate) -> list[list[float]]:
        assert e.mean is not None
        return [[e.mean - e.low if e.low is not None else 0.0], [e.high - e.mean if e.high is not None else 0.0]]

    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    classic = next((s for s in summaries if s.mode == "classic"), None)
    if classic is not None and classic.quality.low is not None and classic.quality.high is not None:
        # The band a system's mean must fall in to count as "as good as classic".
        ax.axhspan(classic.quality.low, classic.quality.high, color="tab:gray", alpha=0.15,
                   label="classic's 95% CI")
    for s in summaries:
        if s.quality.mean is None or s.ttft_s.mean is None:
            continue
        marker = {"single": "s", "classic": "D", "staircase-reprefill": "^"}.get(s.mode, "o")
        ax.errorbar(s.ttft_s.mean, s.quality.mean, xerr=err(s.ttft_s), yerr=err(s.quality), fmt=marker, capsize=3,
                    label=s.system)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # outside: points often overlap
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("mean time to first token (s, log scale)")
    ax.set_ylabel("mean quality score")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def as_json(summaries: Sequence[SystemSummary]) -> list[dict[str, Any]]:
    """Summaries as plain dicts (summary.json)."""
    return [asdict(s) for s in summaries]
