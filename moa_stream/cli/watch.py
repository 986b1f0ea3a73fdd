"""`moa-stream watch mqtt://HOST:PORT`: print a run that another host publishes on MQTT, live, until Done."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from typing import TextIO, cast

from rich.console import Console
from rich.text import Text

from moa_stream import AgentError, AggregatorDelta, ChunkIngested, Done, Event, FirstToken, Mode, ProposerDelta

from .turn_view import PanelAgent, TurnView, status_text

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `watch`'s options."""
    from moa_stream.bus import ANY_RUN, DEFAULT_PREFIX

    p.add_argument("url", metavar="URL", help="the MQTT broker, mqtt://HOST[:PORT]")
    p.add_argument("--run", metavar="ID", default=ANY_RUN,
                   help="the run id `moa-stream run --mqtt` printed (default: the next run that starts)")
    p.add_argument("--prefix", metavar="PREFIX", default=DEFAULT_PREFIX,
                   help=f"topic prefix the run publishes under (default: {DEFAULT_PREFIX})")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up after S seconds without an event (default: wait)")


@dataclass
class WatchLog:
    """A pipe's view of a run: proposer text dimmed under its name, answer text live, TTFT and status lines.

    Proposer deltas are held per agent and written a chunk (as the aggregator takes it in) or a sentence at a
    time: streams that interleave token by token would otherwise switch speaker at every word.
    """

    console: Console
    speaker: str | None = None
    held: dict[str, str] = field(default_factory=dict)

    def apply(self, ev: Event) -> None:
        """Print one event."""
        if isinstance(ev, ProposerDelta):
            text = self.held.get(ev.agent, "") + ev.text
            self.held[ev.agent] = text
            if len(text) >= 80 or text.rstrip(" ").endswith((".", "!", "?", "\n")):
                self._flush(ev.agent)
        elif isinstance(ev, ChunkIngested):
            self._flush(ev.agent)  # what the aggregator just read
        elif isinstance(ev, AggregatorDelta):
            self._switch("answer", Text("answer: ", style="bold cyan"))
            self.console.print(Text(ev.text), end="")
        elif isinstance(ev, FirstToken):
            self._line(Text(f"[TTFT {ev.ttft_s:.2f} s]", style="green"))
        elif isinstance(ev, AgentError):
            self._flush(ev.agent)
            self._line(Text(f"[agent {ev.agent} {ev.kind}: {ev.error}]", style="red"))
        elif isinstance(ev, Done):
            for agent in list(self.held):
                self._flush(agent)
            self._line(Text.assemble(("final answer: ", "bold cyan"), (ev.answer, "bold")))
            self.console.print(Text(f"[{status_text(ev.metrics)}]", style="green"))

    def _flush(self, agent: str) -> None:
        text = self.held.pop(agent, "")
        if text:
            self._switch(f"proposer {agent}", Text(f"{agent}: ", style="dim bold"))
            self.console.print(Text(text.replace("\n", " "), style="dim"), end="")

    def _switch(self, speaker: str, label: Text) -> None:
        if self.speaker != speaker:
            self.console.print()
            self.console.print(label, end="")
            self.speaker = speaker

    def _line(self, text: Text) -> None:
        self.console.print()
        self.console.print(text)
        self.speaker = None


@dataclass
class WatchPanels:
    """A terminal's view: chat's live panels (dimmed proposals, the answer, a status line), agents as they appear."""

    console: Console
    view: TurnView = field(default_factory=lambda: TurnView(mode=cast("Mode", "remote"), agents=[]))

    def apply(self, ev: Event) -> None:
        """Take in one event."""
        if isinstance(ev, ProposerDelta | ChunkIngested | AgentError) and ev.agent not in self.view.proposals:
            self.view.agents.append(PanelAgent(ev.agent, ev.layer))  # the config lives on the publisher's host
        if isinstance(ev, Done):
            self.view.mode = ev.metrics.mode
        self.view.apply(ev)


async def watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Subscribe and print until the run's Done."""
    from moa_stream.bus import subscribe

    ready = asyncio.Event()
    what = "the next run" if args.run == "+" else f"run {args.run}"

    async def announce() -> None:
        await ready.wait()
        err.write(f"[watching {what} on {args.url}, topics {args.prefix}/{args.run}/+]\n")
        err.flush()

    console = Console(file=out, highlight=False, soft_wrap=True)
    announcer = asyncio.create_task(announce())
    events = subscribe(args.url, args.run, prefix=args.prefix, idle_timeout=args.timeout, ready=ready)
    try:
        if console.is_terminal:
            from rich.live import Live

            panels = WatchPanels(console)
            with Live(panels.view, console=console, refresh_per_second=12, transient=False):
                async for ev in events:
                    panels.apply(ev)
        else:
            log = WatchLog(console)
            async for ev in events:
                log.apply(ev)
    except TimeoutError as exc:
        print(f"moa-stream watch: {exc}", file=err)
        return EXIT_RUNTIME
    finally:
        announcer.cancel()
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Watch one run; 0 at its Done, 2 bad URL/prefix/run id, 1 broker unreachable or --timeout passed."""
    from moa_stream.bus import BadMqttUrl, MqttBusError

    if args.timeout is not None and args.timeout <= 0:
        print(f"moa-stream watch: --timeout wants a positive number of seconds, got {args.timeout}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(watch(args, sys.stdout, sys.stderr))
    except BadMqttUrl as exc:
        print(f"moa-stream watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MqttBusError as exc:
        print(f"moa-stream watch: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
