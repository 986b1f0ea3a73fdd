"""Summaries of a results file: means with 95% confidence intervals, a rich table, a quality-vs-TTFT plot."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .scorers import rouge_l


@dataclass
class Estimate:
    """A mean and the half-width of its 95% confidence interval (normal approximation)."""

    mean: float | None
    ci95: float | None
    n: int

    def __str__(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.3f} ± {self.ci95:.3f}" if self.ci95 is not None else f"{self.mean:.3f}"


def estimate(values: Sequence[float | None]) -> Estimate:
    """Mean and 95% CI half-width of the non-missing values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Estimate(None, None, 0)
    if len(xs) == 1:
        return Estimate(xs[0], None, 1)
    return Estimate(statistics.fmean(xs), 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)), len(xs))


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
    agreement_with_classic: Estimate  # ROUGE-L against classic's answer to the same sample
    errors: int


def summarize(rows: Sequence[dict[str, Any]]) -> list[SystemSummary]:
    """Per-system summaries, in the order systems first appear."""
    classic = {r["sample_id"]: r["answer"] for r in rows if r["mode"] == "classic"}
    by_system: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_system[r["system"]].append(r)
    out = []
    for name, rs in by_system.items():
        agree = [rouge_l(r["answer"], classic[r["sample_id"]]) for r in rs if r["sample_id"] in classic]
        out.append(SystemSummary(
            system=name, mode=rs[0]["mode"], chunk=rs[0]["chunk"], samples=len(rs),
            quality=estimate([r["score"] for r in rs]), ttft_s=estimate([r["ttft_s"] for r in rs]),
            total_s=estimate([r["total_s"] for r in rs]), agreement_with_classic=estimate(agree),
            errors=sum(1 for r in rs if r.get("error"))))
    return out


def table(summaries: Sequence[SystemSummary], title: str = "quality vs TTFT") -> Any:
    """A rich table of the summaries."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("system", "n", "quality (mean ± 95% CI)", "TTFT s", "total s", "ROUGE-L vs classic", "errors"):
        t.add_column(col, justify="left" if col == "system" else "right", no_wrap=col == "system")
    for s in summaries:
        t.add_row(s.system, str(s.samples), str(s.quality), str(s.ttft_s), str(s.total_s),
                  str(s.agreement_with_classic), str(s.errors))
    return t


def markdown(summaries: Sequence[SystemSummary]) -> str:
    """The same table as Markdown, for README and results folders."""
    lines = ["| system | n | quality (mean ± 95% CI) | TTFT s | total s | ROUGE-L vs classic | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.system} | {s.samples} | {s.quality} | {s.ttft_s} | {s.total_s} | "
                     f"{s.agreement_with_classic} | {s.errors} |")
    return "\n".join(lines) + "\n"


def plot(summaries: Sequence[SystemSummary], path: Path, title: str = "quality vs time to first token") -> Path:
    """Scatter of mean quality against mean TTFT (with 95% CI bars), one point per system, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for s in summaries:
        if s.quality.mean is None or s.ttft_s.mean is None:
            continue
        ax.errorbar(s.ttft_s.mean, s.quality.mean, xerr=s.ttft_s.ci95 or 0, yerr=s.quality.ci95 or 0, fmt="o",
                    capsize=3, label=s.system)
        ax.annotate(s.system, (s.ttft_s.mean, s.quality.mean), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.set_xscale("log")
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
