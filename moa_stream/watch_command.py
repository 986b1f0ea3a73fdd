"""`moa-stream watch mqtt://HOST:PORT`: print a run that another host publishes on MQTT, live, until Done."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.text import Text

from .events import AgentError, AggregatorDelta, Done, Event, FirstToken, ProposerDelta

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `watch`'s options."""
    from .mqtt_bus import ANY_RUN, DEFAULT_PREFIX

    p.add_argument("url", metavar="URL", help="the MQTT broker, mqtt://HOST[:PORT]")
    p.add_argument("--run", metavar="ID", default=ANY_RUN,
                   help="the run id `moa-stream run --mqtt` printed (default: the next run that starts)")
    p.add_argument("--prefix", metavar="PREFIX", default=DEFAULT_PREFIX,
                   help=f"topic prefix the run publishes under (default: {DEFAULT_PREFIX})")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up after S seconds without an event (default: wait)")


@dataclass
class WatchPrinter:
    """Writes events as a log: proposer text dimmed under its name, answer text, TTFT and status lines."""

    console: Console
    speaker: str | None = None

    def _switch(self, speaker: str, label: Text) -> None:
        if self.speaker != speaker:
            self.console.print()
            self.console.print(label, end="")
            self.speaker = speaker

    def apply(self, ev: Event) -> None:
        """Print one event."""
        from .chat_view import status_text

        if isinstance(ev, ProposerDelta):
            self._switch(f"p:{ev.agent}", Text(f"{ev.agent}: ", style="dim bold"))
            self.console.print(Text(ev.text, style="dim"), end="")
        elif isinstance(ev, AggregatorDelta):
            self._switch("answer", Text("answer: ", style="bold cyan"))
            self.console.print(Text(ev.text), end="")
        elif isinstance(ev, FirstToken):
            self._line(Text(f"[TTFT {ev.ttft_s:.2f} s]", style="green"))
        elif isinstance(ev, AgentError):
            self._line(Text(f"[agent {ev.agent} {ev.kind}: {ev.error}]", style="red"))
        elif isinstance(ev, Done):
            self._line(Text.assemble(("final answer: ", "bold cyan"), (ev.answer, "bold")))
            self.console.print(Text(f"[{status_text(ev.metrics)}]", style="green"))

    def _line(self, text: Text) -> None:
        self.console.print()
        self.console.print(text)
        self.speaker = None


async def watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Subscribe and print until the run's Done."""
    from .mqtt_bus import subscribe

    ready = asyncio.Event()
    what = "the next run" if args.run == "+" else f"run {args.run}"

    async def announce() -> None:
        await ready.wait()
        err.write(f"[watching {what} on {args.url}, topics {args.prefix}/{args.run}/+]\n")
        err.flush()

    printer = WatchPrinter(Console(file=out, highlight=False, soft_wrap=True))
    announcer = asyncio.create_task(announce())
    try:
        async for ev in subscribe(args.url, args.run, prefix=args.prefix, idle_timeout=args.timeout, ready=ready):
            printer.apply(ev)
    except TimeoutError as exc:
        print(f"moa-stream watch: {exc}", file=err)
        return EXIT_RUNTIME
    finally:
        announcer.cancel()
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Watch one run; 0 at its Done, 2 bad URL/prefix/run id, 1 broker unreachable or --timeout passed."""
    from .mqtt_bus import BadMqttUrl, MqttBusError

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
