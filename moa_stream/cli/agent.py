"""`moa-stream agent "task" --tools bfcl:GorillaFileSystem,MathAPI`: a tool-using agent, live or as JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import TYPE_CHECKING

from .options import positive_int

if TYPE_CHECKING:
    from moa_stream.agent.agent import Agent

    from .agent_view import AgentRecord

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"wants a positive number of seconds, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `agent`'s options."""
    p.add_argument("task", nargs="?", default=None, help="what to do; '-' or nothing reads it from stdin (a pipe)")
    p.add_argument("--tools", default=None, metavar="SPEC",
                   help="comma-separated tools: bfcl:<Class> (GorillaFileSystem, MathAPI, TwitterAPI, MessageAPI, "
                        "TicketAPI, TradingBot, TravelAPI, VehicleControlAPI; later bare class names too) or "
                        "<module>:<function>")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="HF model id or local folder (default: the offline SmolLM2)")
    p.add_argument("--system", default=None, metavar="TEXT", help="the agent's instructions (before the tools)")
    p.add_argument("--max-steps", type=positive_int, default=6, metavar="N", help="most steps (default: 6)")
    p.add_argument("--max-tokens", type=positive_int, default=256, metavar="N",
                   help="most tokens the model writes per step (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    p.add_argument("--tool-choice", choices=("auto", "required", "none"), default="auto",
                   help="auto: the model decides; required: the first step must call a tool; none: no calls")
    p.add_argument("--tool-timeout", type=_seconds, default=30.0, metavar="S",
                   help="a call running longer becomes an error result (default: 30)")
    p.add_argument("--no-constrain", action="store_true",
                   help="let the model write calls freely (default: a grammar keeps every call valid)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: answer, steps (text, calls, results, metrics), run metrics")
    p.add_argument("-q", "--quiet", action="store_true", help="without a terminal: no calls or figures on stderr")


def _task(args: argparse.Namespace) -> str | None:
    if args.task not in (None, "-"):
        return str(args.task)
    if sys.stdin.isatty():
        return None
    return sys.stdin.read()


def build_agent(args: argparse.Namespace) -> Agent:
    """The tools first (fast usage errors), then the engine and the agent."""
    from engine import SamplingParams
    from moa_stream.agent.agent import Agent
    from moa_stream.backends import build_engine
    from moa_stream.config import TransformersBackend, check_temperature
    from moa_stream.tools import ToolSet, toolset

    try:
        temperature = check_temperature(args.temperature)
    except ValueError as exc:
        from moa_stream import ConfigError

        raise ConfigError(f"--temperature {exc}") from None
    tools = toolset(args.tools, timeout=args.tool_timeout) if args.tools else ToolSet(timeout=args.tool_timeout)
    engine = build_engine(TransformersBackend(model=args.model))
    return Agent(engine, tools, system_prompt=args.system, tool_choice=args.tool_choice, later_tool_choice="auto"
                 if args.tool_choice == "required" else None, constrained=not args.no_constrain,
                 sampling=SamplingParams(max_tokens=args.max_tokens, temperature=temperature),
                 max_steps=args.max_steps, tool_timeout=args.tool_timeout)


async def _drive(agent: Agent, task: str, view: AgentRecord, live: bool) -> None:
    from rich.console import Console
    from rich.live import Live

    ctx = Live(view, console=Console(stderr=False), refresh_per_second=8) if live else contextlib.nullcontext()
    try:
        with ctx:
            async for ev in agent.run(task):
                view.apply(ev)
    finally:
        await agent.aclose()
        await agent.engine.shutdown()


def main(args: argparse.Namespace) -> int:
    """Run the agent on the task; 0 ok, 2 bad usage (task, tools, options), 1 runtime failure."""
    import io

    from moa_stream.tools import ToolError

    from .agent_view import AgentRecord, AgentView, PlainAgentView

    task = _task(args)
    if task is None or not task.strip():
        print("moa-stream agent: the task is empty; pass it as an argument or pipe it on stdin", file=sys.stderr)
        return EXIT_USAGE
    try:
        agent = build_agent(args)
    except ToolError as exc:
        print(f"moa-stream agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    live = not args.json and sys.stdout.isatty()
    view: AgentRecord
    if args.json:
        view = AgentRecord()
    elif live:
        view = AgentView()
    else:
        view = PlainAgentView(sys.stdout, io.StringIO() if args.quiet else sys.stderr)
    asyncio.run(_drive(agent, task, view, live))
    if args.json:
        print(json.dumps({**view.as_json(), "model": agent.engine.model_name, "tools": agent.tools.names}))
    return EXIT_OK
