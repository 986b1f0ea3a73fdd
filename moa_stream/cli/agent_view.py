"""How an agent run looks: each step's text, calls and results, with per-step TTFT and tokens computed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from moa_stream.agent.events import AgentDelta, AgentDone, AgentEvent, AgentRunMetrics, StepDone, StepMetrics
from moa_stream.tools import ToolCall, ToolResult


def step_line(m: StepMetrics) -> str:
    """One step's figures: TTFT, prefill tokens computed, decode tokens, calls, time in tools."""
    ttft = f"{m.ttft_s:.2f} s" if m.ttft_s is not None else "-"
    return (f"step {m.step} | TTFT {ttft} | computed {m.prefill_computed} tok | decoded {m.decode_tokens} tok | "
            f"{m.calls} call{'s' if m.calls != 1 else ''} | tools {m.tools_s:.2f} s")


def run_line(m: AgentRunMetrics) -> str:
    """The run's figures."""
    ttft = f"{m.ttft_s:.2f} s" if m.ttft_s is not None else "-"
    return (f"{m.finish} | {len(m.steps)} steps | TTFT {ttft} | total {m.total_s:.2f} s | "
            f"computed {m.prefill_computed} tok | decoded {m.decode_tokens} tok | {m.tool_calls} calls, "
            f"{m.tool_errors} errors, {m.tool_cache_hits} from the cache | speculated {m.speculations_taken} taken "
            f"of {m.speculations_started} | tools {m.tools_s:.2f} s")


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class StepRecord:
    """What one step wrote, called and got back."""

    index: int
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)
    metrics: StepMetrics | None = None

    def as_json(self) -> dict[str, Any]:
        """The step as JSON: text, calls, results and metrics."""
        return {"step": self.index, "text": self.text,
                "calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.calls],
                "results": [{"id": r.id, "name": r.name, "result": r.result, "error": r.error, "cached": r.cached,
                             "speculated": r.speculated, "elapsed_s": r.elapsed_s} for r in self.results],
                "metrics": self.metrics.model_dump() if self.metrics else None}


@dataclass
class AgentRecord:
    """An agent run built up from its events (what the views show and `--json` prints)."""

    steps: list[StepRecord] = field(default_factory=list)
    done: AgentDone | None = None
    t0: float = field(default_factory=time.perf_counter)

    def _step(self, index: int) -> StepRecord:
        while len(self.steps) <= index:
            self.steps.append(StepRecord(len(self.steps)))
        return self.steps[index]

    def apply(self, ev: AgentEvent) -> None:
        """Take in one event."""
        current = len(self.steps) - 1 if self.steps else 0
        if isinstance(ev, AgentDelta):
            self._step(ev.step).text += ev.text
        elif isinstance(ev, ToolCall):
            self._step(current).calls.append(ev)
        elif isinstance(ev, ToolResult):
            self._step(current).results.append(ev)
        elif isinstance(ev, StepDone):
            self._step(ev.metrics.step).metrics = ev.metrics
        elif isinstance(ev, AgentDone):
            self.done = ev

    def as_json(self) -> dict[str, Any]:
        """The whole run: answer, steps (text, calls, results, metrics) and the run's metrics."""
        done = self.done
        return {"answer": done.answer if done else None, "finish": done.metrics.finish if done else None,
                "steps": [s.as_json() for s in self.steps],
                "metrics": done.metrics.model_dump() if done else None}


class AgentView(AgentRecord):
    """The live rich view: a panel per step (its text, its calls and results), the run's status below."""

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        for s in self.steps:
            body = Text(s.text.strip() or "…", style="dim" if s.metrics else "")
            results = {r.id: r for r in s.results}
            for c in s.calls:
                body.append(f"\n→ {c.name}({_short(c.arguments, 80)})", style="bold cyan")
                r = results.get(c.id)
                if r is not None:
                    mark = " (cached)" if r.cached else ""
                    body.append(f"\n  ← {_short(r.error or r.result)}{mark}", style="red" if r.error else "green")
            subtitle = step_line(s.metrics) if s.metrics else f"step {s.index} | generating"
            parts.append(Panel(body, title=f"step {s.index}", subtitle=subtitle, title_align="left",
                               subtitle_align="right", border_style="green" if s.metrics else "yellow"))
        if self.done is not None:
            parts.append(Panel(Text(self.done.answer or "(no answer)", style="bold"), title="answer",
                               title_align="left", border_style="cyan"))
            parts.append(Text(run_line(self.done.metrics), style="green"))
        else:
            parts.append(Text(f"running | {time.perf_counter() - self.t0:.1f} s", style="yellow"))
        return Group(*parts)


class PlainAgentView(AgentRecord):
    """The pipe fallback: the agent's text to `out`, calls, results and step figures to `err`."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        super().__init__()
        self.out, self.err = out, err

    def apply(self, ev: AgentEvent) -> None:
        """Take in one event and print it."""
        super().apply(ev)
        if isinstance(ev, AgentDelta):
            self.out.write(ev.text)
            self.out.flush()
        elif isinstance(ev, ToolCall):
            self.err.write(f"\n[call {ev.name}({_short(ev.arguments, 200)})]\n")
        elif isinstance(ev, ToolResult):
            self.err.write(f"[{'error' if ev.error else 'result'} {ev.name}: {_short(ev.error or ev.result)}]\n")
        elif isinstance(ev, StepDone):
            self.out.write("\n")
            self.err.write(f"[{step_line(ev.metrics)}]\n")
        elif isinstance(ev, AgentDone):
            self.err.write(f"[{run_line(ev.metrics)}]\n")
        self.out.flush()
        self.err.flush()
