"""How a streaming turn looks: a live panel per proposer, the answer below, a status line; or plain text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from moa_stream import (
    DEBATE_MODES,
    AgentError,
    AggregatorDelta,
    ChunkIngested,
    Done,
    Event,
    FirstToken,
    Metrics,
    MoAConfig,
    Mode,
    ProposerDelta,
    pipeline,
)


def status_text(metrics: Metrics) -> str:
    """One line: mode, TTFT, total time, tokens/s, chunks ingested, prefill tokens saved."""
    ttft = f"{metrics.ttft_s:.2f} s" if metrics.ttft_s is not None else "-"
    return (f"{metrics.mode} | TTFT {ttft} | total {metrics.total_s:.2f} s | {metrics.tokens_per_s:.1f} tok/s | "
            f"{metrics.answer_tokens} answer tokens | {metrics.chunks_ingested} chunks ingested | "
            f"prefill saved {metrics.prefill_saved} tok")


class _Tail:
    """The last `lines` wrapped lines of a text: a proposal panel shows where the proposer is writing now."""

    def __init__(self, text: str, lines: int, style: str = "") -> None:
        self.text, self.lines, self.style = text, lines, style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rendered = console.render_lines(Text(self.text, style=self.style), options, pad=False)
        rendered = rendered[-self.lines:] if self.text else []
        rendered += [[]] * (self.lines - len(rendered))  # fixed height: panels don't jump as they fill
        for line in rendered:
            yield from line
            yield Segment.line()


@dataclass
class _Proposal:
    text: str = ""
    chunks: int = 0
    done: bool = False
    error: str | None = None


@dataclass(frozen=True)
class PanelAgent:
    """A proposer as its panel names it: name, layer, and the model it runs on."""

    name: str
    layer: int = 0
    model: str | None = None


def panel_agents(config: MoAConfig, mode: str | None = None) -> list[PanelAgent]:
    """The proposers `mode` runs on the config, in order, each with its layer (a debate's round) and model label."""
    pipe = pipeline(config, mode or config.mode)
    return [PanelAgent(a.name, i, config.model_label(a)) for i, layer in enumerate(pipe.layers) for a in layer]


@dataclass
class TurnView:
    """State of one streaming turn, fed with its events; renders itself with rich.

    A panel's title names the model only where the panel mixes models (heterogeneous MoA): on one model it would
    repeat the same words over every panel.
    """

    mode: Mode
    agents: list[PanelAgent]  # proposers in config order
    aggregator_model: str | None = None
    show_proposers: bool = True
    proposal_lines: int = 6
    proposals: dict[str, _Proposal] = field(default_factory=dict)
    answer: str = ""
    ttft_s: float | None = None
    chunks: int = 0
    metrics: Metrics | None = None
    cancelled: bool = False
    failed: str | None = None
    t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.proposals = {a.name: _Proposal() for a in self.agents}

    def _mixed_models(self) -> bool:
        return len({a.model for a in self.agents} | {self.aggregator_model}) > 1

    def apply(self, ev: Event) -> None:
        """Take in one event."""
        if isinstance(ev, ProposerDelta):
            self.proposals.setdefault(ev.agent, _Proposal()).text += ev.text
        elif isinstance(ev, ChunkIngested):
            self.chunks += 1
            p = self.proposals.setdefault(ev.agent, _Proposal())
            p.chunks += 1
            p.done = p.done or ev.final
        elif isinstance(ev, AggregatorDelta):
            self.answer += ev.text
        elif isinstance(ev, FirstToken):
            self.ttft_s = ev.ttft_s
        elif isinstance(ev, AgentError):
            self.proposals.setdefault(ev.agent, _Proposal()).error = f"{ev.kind}: {ev.error}"
        elif isinstance(ev, Done):
            self.metrics = ev.metrics
            self.answer = ev.answer

    def status(self) -> str:
        """The status line: final metrics once done, live TTFT and elapsed time before."""
        if self.metrics is not None:
            return status_text(self.metrics)
        ttft = f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "waiting"
        state = " | cancelled" if self.cancelled else f" | failed: {self.failed}" if self.failed else ""
        return (f"{self.mode} | TTFT {ttft} | elapsed {time.perf_counter() - self.t0:.2f} s | "
                f"{self.chunks} chunks ingested{state}")

    def _proposal_panel(self, agent: PanelAgent) -> Panel:
        p = self.proposals[agent.name]
        if p.error:
            border, note = "red", p.error[:60]
        elif p.done:
            border, note = "green", f"{p.chunks} chunks in, done"
        else:
            border, note = "yellow", f"{p.chunks} chunks in"
        if self.mode in DEBATE_MODES:
            title = f"round {agent.layer + 1} · {agent.name.split('@')[0]}"
        else:
            title = agent.name if len({a.layer for a in self.agents}) < 2 else f"L{agent.layer} {agent.name}"
        if agent.model and self._mixed_models():
            title += f" · {agent.model}"
        return Panel(_Tail(p.text, self.proposal_lines, "dim" if p.done else ""), title=title, subtitle=note,
                     border_style=border, title_align="left", subtitle_align="right")

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.show_proposers and self.mode != "single" and self.agents:
            rows: dict[int, list[PanelAgent]] = {}
            for a in self.agents:  # a row of panels per layer (a debate's round)
                rows.setdefault(a.layer, []).append(a)
            grid = Table.grid(expand=True, padding=(0, 1))
            for _ in range(max(len(r) for r in rows.values())):
                grid.add_column(ratio=1)
            for row in rows.values():
                grid.add_row(*(self._proposal_panel(a) for a in row))
            parts.append(grid)
        answer_style = "bold" if self.metrics else ""
        title = f"answer · {self.aggregator_model}" if self.aggregator_model and self._mixed_models() else "answer"
        parts.append(Panel(Text(self.answer or "", style=answer_style), title=title, title_align="left",
                           border_style="cyan" if self.metrics else "blue"))
        status_style = "red" if self.cancelled or self.failed else "green" if self.metrics else "yellow"
        parts.append(Text(self.status(), style=status_style))
        return Group(*parts)


class PlainView:
    """The pipe fallback: answer text to `out` as it streams, TTFT and the status line to `err`."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.metrics: Metrics | None = None

    def apply(self, ev: Event) -> None:
        """Take in one event."""
        if isinstance(ev, AggregatorDelta):
            self.out.write(ev.text)
            self.out.flush()
        elif isinstance(ev, FirstToken):
            self.err.write(f"[TTFT {ev.ttft_s:.2f} s]\n")
            self.err.flush()
        elif isinstance(ev, AgentError):
            self.err.write(f"[agent {ev.agent} {ev.kind}: {ev.error}]\n")
        elif isinstance(ev, Done):
            self.metrics = ev.metrics
            self.out.write("\n")
            self.out.flush()
            self.err.write(f"[{status_text(ev.metrics)}]\n")
            self.err.flush()
