"""One mode's run on one scenario and its figures (per-step latency, tokens computed, call fidelity)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .modes import StepRecord


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class ModeRun:
    """One mode on one scenario: per-step figures and the engine's counters over the run."""

    mode: str
    agents: int
    steps: int
    wall_s: float
    records: list[StepRecord] = field(default_factory=list)
    engine: dict[str, int] = field(default_factory=dict)
    kv_fraction: float | None = None  # the budget's fraction of the agents' KV footprint (None: unbounded)

    def summary(self) -> dict[str, Any]:
        """Per-step latency median and p90, tokens computed per step, call fidelity, engine counter deltas."""
        model = [r.model_s for r in self.records]
        computed = [r.computed for r in self.records]
        return {
            "mode": self.mode, "agents": self.agents, "steps": self.steps, "kv_fraction": self.kv_fraction,
            "wall_s": self.wall_s,
            "step_median_s": statistics.median(model) if model else math.nan,
            "step_p90_s": _quantile(model, 0.9),
            "step_mean_s": statistics.fmean(model) if model else math.nan,
            "computed_per_step_median": statistics.median(computed) if computed else 0,
            "computed_per_step_mean": statistics.fmean(computed) if computed else 0.0,
            "computed_total": sum(computed),
            "reused_total": sum(r.reused for r in self.records),
            "recomputed_total": sum(r.recomputed for r in self.records),
            "delta_per_step_mean": statistics.fmean(r.delta_tokens for r in self.records) if self.records else 0.0,
            "final_context_max": max((r.context_tokens for r in self.records), default=0),
            "calls_matched": sum(r.call_matched for r in self.records),
            "calls": len(self.records),
            "capacity_retries": sum(r.capacity_retries for r in self.records),
            "decode_tok_s": self.decode_tok_s(),
            "engine": self.engine,
        }

    def decode_tok_s(self) -> float | None:
        """Tokens written after each step's first, per second of the time they took (None: nothing decoded)."""
        seconds = sum(r.decode_s for r in self.records)
        return sum(r.decode_tokens for r in self.records) / seconds if seconds > 0 else None
