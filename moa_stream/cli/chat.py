"""`moa-stream chat`: a multi-turn chat that shows the staircase happen, with slash commands.

In a terminal every turn is a live view (a panel per proposer, the answer, a status line with TTFT). Piped,
answers go to stdout as plain text and TTFT/status lines to stderr. Ctrl-C during an answer cancels it and
returns to the prompt; Ctrl-C at the prompt right after another Ctrl-C exits.

Ctrl-C is an event of the chat's one event loop (`loop.add_signal_handler`), never an exception raised at a random
point: the prompt line is read through the same loop, so a Ctrl-C that lands just before the read (where a blocking
`input()` would lose it until Enter) still wakes the prompt, and one that lands while a notice prints cannot escape
the loop half-handled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from .options import add_moa_arguments, build_moa

if TYPE_CHECKING:
    from rich.console import Console

    from moa_stream import Conversation, Metrics, MoA, Mode, StaircaseConfig

HELP = """commands:
  /mode classic|staircase|staircase-reprefill|single   how the aggregator takes in the proposals
  /chunk N                                             staircase chunk size in tokens (first chunk too)
  /start all|first|at_once                             when the answer starts: every proposal's first chunk
                                                       read, the first one, or at once on the question alone
  /proposers [on|off]                                  show or hide the proposer panels
  /reset                                               forget the conversation
  /stats                                               last turn's metrics and the engine's counters
  /help                                                this list
  /quit                                                leave (also Ctrl-D, or Ctrl-C twice)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `chat`'s options."""
    add_moa_arguments(p)
    p.add_argument("--plain", action="store_true", help="plain text even in a terminal (no live panels)")
    p.add_argument("--hide-proposers", action="store_true", help="start with the proposer panels hidden")


class Interrupt:
    """What the prompt returns when Ctrl-C came before a line."""


INTERRUPT = Interrupt()


class LineReader:
    """Lines from a file descriptor, awaited on the event loop (so a Ctrl-C event can interrupt the wait)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""
        self._eof = False

    async def readline(self) -> str | None:
        """The next line without its newline; None at the end of input."""
        while b"\n" not in self._buf and not self._eof:
            await self._readable()
            chunk = os.read(self.fd, 65536)
            self._eof = not chunk
            self._buf += chunk
        if not self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", errors="replace")

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_reader(self.fd, lambda: ready.done() or ready.set_result(None))
        except PermissionError:  # a regular file: epoll refuses it, and reading it never blocks
            return
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)


@dataclass
class ChatState:
    """What slash commands change."""

    mode: Mode
    staircase: StaircaseConfig
    show_proposers: bool = True
    max_tokens: int | None = None
    last: Metrics | None = None


class ChatSession:
    """The prompt loop; one event loop lives across turns, so agents stay warm."""

    def __init__(self, moa: MoA, state: ChatState, console: Console | None, out: TextIO, err: TextIO) -> None:
        self.moa = moa
        self.state = state
        self.console = console  # None: plain pipe mode
        self.out, self.err = out, err
        self.conv: Conversation = moa.conversation(mode=state.mode)
        self.interactive = sys.stdin.isatty()
        self.lines = LineReader(sys.stdin.fileno())
        self._turn: asyncio.Future[None] | None = None
        self._interrupted = asyncio.Event()  # wakes the prompt; `_interrupts` says how many Ctrl-C came
        self._interrupts = 0

    # ------------------------------------------------------------------ output

    def info(self, text: str, style: str = "dim") -> None:
        """A notice: styled in the terminal; on stderr in a pipe so stdout carries only answers."""
        if self.console is not None:
            self.console.print(text, style=style, markup=False, highlight=False)
        else:
            self.err.write(text + "\n")
            self.err.flush()

    async def _read(self) -> str | Interrupt:
        """The next line, or Interrupt when Ctrl-C came first; raises EOFError at the end of input."""
        if self.console is not None:
            self.console.print("[bold green]you>[/] ", end="")
        elif self.interactive:
            self.err.write("you> ")
            self.err.flush()
        if self._interrupts:  # Ctrl-C while the prompt was printing
            self._interrupts -= 1
            return INTERRUPT
        self._interrupted.clear()
        read = asyncio.ensure_future(self.lines.readline())
        interrupt = asyncio.ensure_future(self._interrupted.wait())
        try:
            await asyncio.wait({read, interrupt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupt.cancel()
            if not read.done():
                read.cancel()
            await asyncio.gather(read, interrupt, return_exceptions=True)
        if not read.done() or read.cancelled():  # only a Ctrl-C woke us (a typed line wins; the Ctrl-C stays counted)
            self._interrupts -= 1
            return INTERRUPT
        line = read.result()
        if line is None:
            raise EOFError
        return line

    def _on_sigint(self) -> None:
        """Ctrl-C: cancel the answer being written, else wake the prompt."""
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()
        else:  # counted, so two quick presses are two
            self._interrupts += 1
            self._interrupted.set()

    # ------------------------------------------------------------------ loop

    def loop(self) -> int:
        """Read, answer, repeat until /quit, end of input or a second Ctrl-C."""
        asyncio.run(self.aloop())
        if self.console is not None:
            self.info("bye")
        return 0

    async def aloop(self) -> None:
        """The prompt loop on one event loop, so agents stay warm across turns."""
        if self.console is not None:
            self.info(f"moa-stream chat | mode {self.state.mode} | {self._agents_line()} | /help for commands")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        last_was_interrupt = False
        try:
            while True:
                try:
                    line = await self._read()
                except EOFError:
                    break
                if isinstance(line, Interrupt):
                    if last_was_interrupt:
                        break
                    last_was_interrupt = True
                    self.info("\n(Ctrl-C again or /quit to leave)")
                    continue
                last_was_interrupt = False
                text = line.strip()
                if not text:
                    continue
                if text.startswith("/"):
                    if not await self.command(text):
                        break
                    continue
                self._turn = asyncio.ensure_future(self.turn(text))
                try:
                    await self._turn
                except asyncio.CancelledError:
                    if not self._turn.cancelled():  # we ourselves are being cancelled, not the answer
                        raise
                    last_was_interrupt = True
                    self.info("answer cancelled (Ctrl-C); ask again, or Ctrl-C once more to leave", "yellow")
                finally:
                    self._turn = None
        finally:
            # Ctrl-C is only an event now, so this cleanup runs to its end and frees every sequence.
            await self.conv.close()
            await self.moa.aclose()
            loop.remove_signal_handler(signal.SIGINT)

    async def turn(self, text: str) -> None:
        """One answer, streamed into the live view (or as plain text)."""
        from moa_stream import EngineError, MoAError, pipeline

        from .turn_view import PlainView, TurnView, panel_agents

        st = self.state
        events = self.conv.stream(text, mode=st.mode, staircase=st.staircase, max_tokens=st.max_tokens)
        if self.console is None:
            plain = PlainView(self.out, self.err)
            try:
                async with contextlib.aclosing(events):
                    async for ev in events:
                        plain.apply(ev)
                st.last = plain.metrics
            except (MoAError, EngineError) as exc:
                self.info(f"error: {exc}")
            return

        from rich.live import Live

        config = self.moa.config
        answerer = pipeline(config, st.mode).aggregator  # a debate's last-round agent may write the answer
        view = TurnView(mode=st.mode, agents=panel_agents(config, st.mode),
                        aggregator_model=config.model_label(answerer), show_proposers=st.show_proposers)
        with Live(view, console=self.console, refresh_per_second=12, transient=False):
            try:
                async with contextlib.aclosing(events):
                    async for ev in events:
                        view.apply(ev)
                st.last = view.metrics
            except asyncio.CancelledError:
                view.cancelled = True
                raise
            except (MoAError, EngineError) as exc:
                view.failed = str(exc)

    # ------------------------------------------------------------------ slash commands

    async def command(self, text: str) -> bool:
        """Run a slash command; False means leave."""
        from moa_stream import MODES, SIMPLE_START_POLICIES

        name, _, arg = text[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        st = self.state
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.info(HELP, "")
        elif name == "mode":
            if arg not in MODES:
                self.info(f"usage: /mode {'|'.join(MODES)} (now {st.mode})", "red")
            else:
                st.mode = arg  # type: ignore[assignment]
                self.info(f"mode: {st.mode}")
        elif name == "chunk":
            if not arg.isdigit() or int(arg) < 1:
                self.info(f"usage: /chunk N with N >= 1 (now first {st.staircase.first_chunk_tokens}, "
                          f"then {st.staircase.chunk_tokens})", "red")
            else:
                n = int(arg)
                st.staircase = st.staircase.with_chunk(n)
                self.info(f"chunk: {n} tokens")
        elif name == "start":
            if arg not in SIMPLE_START_POLICIES:
                self.info(f"usage: /start {'|'.join(SIMPLE_START_POLICIES)} (now {st.staircase.start_policy})", "red")
            else:
                st.staircase = st.staircase.model_copy(update={"start_policy": arg})
                self.info(f"start: {arg}")
        elif name in ("proposers", "show", "hide"):
            if name != "proposers":
                arg = "on" if name == "show" else "off"
            if arg not in ("", "on", "off"):
                self.info("usage: /proposers [on|off]", "red")
            else:
                st.show_proposers = not st.show_proposers if not arg else arg == "on"
                self.info(f"proposers: {'shown' if st.show_proposers else 'hidden'}")
        elif name == "reset":
            await self.conv.reset()
            st.last = None
            self.info("conversation reset")
        elif name == "stats":
            self.stats()
        else:
            self.info(f"unknown command /{name}; /help lists them", "red")
        return True

    def stats(self) -> None:
        """Print the last turn's metrics and each engine's counters."""
        from .turn_view import status_text

        st = self.state
        lines = [f"turns: {len(self.conv.history) // 2} | mode {st.mode} | chunk {st.staircase.first_chunk_tokens}/"
                 f"{st.staircase.chunk_tokens} tokens | start {st.staircase.start_policy} | "
                 f"proposers {'shown' if st.show_proposers else 'hidden'}"]
        if st.last is not None:
            lines.append("last turn: " + status_text(st.last))
            for name, a in st.last.agents.items():
                lines.append(f"  {name:<12} {a.role:<10} prompt {a.prompt_tokens:>5}  out {a.completion_tokens:>4}  "
                             f"prefill computed {a.prefill_computed:>5} reused {a.prefill_reused:>5}  "
                             f"context {a.context_tokens:>5}" + (f"  error: {a.error}" if a.error else ""))
        for backend, es in self.moa.engine_stats().items():
            lines.append(f"engine {backend}: sequences open {es.sequences_open}, resident {es.sequences_resident}, "
                         f"KV {es.kv_bytes_resident / 2**20:.1f} MiB, prefill computed {es.prefill_computed} "
                         f"reused {es.prefill_reused}, decoded {es.decode_tokens}, evictions {es.evictions}")
        self.info("\n".join(lines), "")

    def _agents_line(self) -> str:
        config = self.moa.config
        agents = config.agents()
        if len({config.model_label(a) for a in agents}) > 1:  # heterogeneous: say which model each agent runs
            names = [f"{a.name} ({config.model_label(a)})" for a in agents]
        else:
            names = [a.name for a in agents]
        return f"proposers {', '.join(names[:-1])} -> {names[-1]}"


def main(args: argparse.Namespace) -> int:
    """Chat until /quit; 0 on a normal exit, 2 for a bad config."""
    moa = build_moa(args)
    console = None
    if sys.stdout.isatty() and not args.plain:
        from rich.console import Console

        console = Console(highlight=False)
    state = ChatState(mode=moa.config.mode, staircase=moa.config.staircase,
                      show_proposers=not args.hide_proposers, max_tokens=args.max_tokens)
    return ChatSession(moa, state, console, sys.stdout, sys.stderr).loop()
