"""`moa-stream agent "task" --tools bfcl:GorillaFileSystem,MathAPI`: a tool-using agent, live or as JSON.

Further turns come from stdin, a line each, on the same live sequence: each computes only its own new tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import TYPE_CHECKING

from .options import add_tool_agent_arguments, positive_int, seconds, tool_cache

if TYPE_CHECKING:
    from moa_stream.agent.agent import Agent
    from moa_stream.config import AgentConfig, BackendConfig

    from .agent_view import AgentRecord

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `agent`'s options."""
    p.add_argument("task", nargs="?", default=None,
                   help="what to do; then one further turn per line of stdin (a pipe); '-' or nothing: stdin's "
                        "first line is the task")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a MoA config (YAML/TOML): run its agent --agent (default: the first proposer with tools) on "
                        "its backend, with its tools, sampling, tool_cache and speculation")
    p.add_argument("--agent", default=None, metavar="NAME", help="with --config: which agent to run")
    p.add_argument("--backend", choices=("llamacpp", "transformers"), default=None,
                   help="the engine (default: llama.cpp for a GGUF on a machine without CUDA, else transformers)")
    add_tool_agent_arguments(p, "the agent")
    p.add_argument("--speculate", action="store_true",
                   help="start a pure call the moment the streamed text parses as one")
    p.add_argument("--speculator", choices=("off", "history", "draft"), default=None,
                   help="guess the step's call while it decodes: history (calls seen before) or draft (a short "
                        "greedy draft on a fork of the agent's sequence)")
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
    p.add_argument("--tool-timeout", type=seconds, default=30.0, metavar="S",
                   help="a call running longer becomes an error result (default: 30)")
    p.add_argument("--no-constrain", action="store_true",
                   help="let the model write calls freely (default: a grammar keeps every call valid)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object a turn: answer, steps (text, calls, results, metrics), run metrics")
    p.add_argument("-q", "--quiet", action="store_true", help="without a terminal: no calls or figures on stderr")


def _turns(args: argparse.Namespace) -> list[str]:
    """The task, then the further turns: stdin's non-empty lines where stdin is a pipe."""
    lines = [] if sys.stdin.isatty() else [line.strip() for line in sys.stdin.read().splitlines()]
    first = [] if args.task in (None, "-") else [str(args.task)]
    return [t for t in [*first, *lines] if t]


def _agent_config(args: argparse.Namespace) -> tuple[AgentConfig, BackendConfig]:
    """The agent to run and its backend: from --config, or from the command line's options."""
    from pydantic import ValidationError

    from moa_stream import ConfigError, LlamaCppBackend, MoAConfig, TransformersBackend, default_backend
    from moa_stream.config import AgentConfig, check_temperature

    if args.config:
        moa = MoAConfig.load(args.config)
        agents = [a for layer in moa.layers for a in layer] + [moa.aggregator]
        pick = [a for a in agents if a.name == args.agent] if args.agent else [a for a in agents if a.tools]
        if not pick:
            raise ConfigError(f"{args.config}: no agent named {args.agent!r}" if args.agent else
                              f"{args.config}: no proposer has tools; name one with --agent")
        cfg, backend = pick[0], moa.backends[pick[0].backend]
    else:
        try:
            temperature = check_temperature(args.temperature)
        except ValueError as exc:
            raise ConfigError(f"--temperature {exc}") from None
        try:
            cfg = AgentConfig(name="agent", system_prompt=args.system, temperature=temperature,
                              max_tokens=args.max_tokens, tools=args.tools.split(",") if args.tools else [],
                              tool_choice="required" if args.tool_choice == "required" else "auto",
                              max_tool_steps=args.max_steps, tool_timeout_s=args.tool_timeout)
        except ValidationError as exc:
            raise ConfigError("; ".join(e["msg"] for e in exc.errors())) from None
        backend = default_backend(args.model)
    if args.backend is not None and args.backend != backend.kind:
        model = args.model or getattr(backend, "model", None)
        backend = LlamaCppBackend(model=model) if args.backend == "llamacpp" else TransformersBackend(model=model)
    update: dict[str, object] = {}
    if (cache := tool_cache(args)) is not None:
        update["tool_cache"] = cache
    if args.agent_format is not None:
        update["format"] = args.agent_format
    if args.speculate or args.speculator is not None:
        spec = cfg.speculation
        update["speculation"] = spec.model_copy(update={"stream_start": args.speculate or spec.stream_start,
                                                        "predict": args.speculator or spec.predict})
    return cfg.model_copy(update=update), backend


def build_agent(args: argparse.Namespace) -> Agent:
    """The tools first (fast usage errors), then the engine and the agent."""
    from moa_stream.agent.agent import Agent
    from moa_stream.backends import build_engine
    from moa_stream.tools import toolset

    cfg, backend = _agent_config(args)
    # The tools before the engine: a bad spec is a usage error before any model loads.
    tools = toolset(",".join(cfg.tools), timeout=cfg.tool_timeout_s) if cfg.tools else None
    engine = build_engine(backend, model_override=args.model if args.config else None)
    agent = Agent.from_config(cfg, engine, tools=tools,
                              later_tool_choice=None if cfg.tool_choice == "auto" else "auto")
    if args.tool_choice == "none" and not args.config:
        agent.tool_choice = agent.later_tool_choice = "none"
    agent.constrained = not args.no_constrain
    return agent


async def _drive(agent: Agent, turns: list[str], views: list[AgentRecord], live: bool) -> None:
    """Each turn on the agent's live sequence (the first opens it), into its own view."""
    from rich.console import Console
    from rich.live import Live

    try:
        for i, (text, view) in enumerate(zip(turns, views, strict=True)):
            ctx = Live(view, console=Console(stderr=False), refresh_per_second=8) if live else contextlib.nullcontext()
            with ctx:
                async for ev in (agent.run(text) if i == 0 else agent.send(text)):
                    view.apply(ev)
    finally:
        await agent.aclose()
        await agent.engine.shutdown()


def main(args: argparse.Namespace) -> int:
    """Run the agent on the task and each further turn; 0 ok, 2 bad usage (task, tools, options), 1 runtime failure."""
    import io

    from moa_stream import ConfigError
    from moa_stream.tools import ToolError

    from .agent_view import AgentRecord, AgentView, PlainAgentView

    turns = _turns(args)
    if not turns:
        print("moa-stream agent: the task is empty; pass it as an argument or pipe it on stdin", file=sys.stderr)
        return EXIT_USAGE
    try:
        agent = build_agent(args)
    except (ToolError, ConfigError) as exc:
        print(f"moa-stream agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    live = not args.json and sys.stdout.isatty()
    views: list[AgentRecord]
    if args.json:
        views = [AgentRecord() for _ in turns]
    elif live:
        views = [AgentView() for _ in turns]
    else:
        views = [PlainAgentView(sys.stdout, io.StringIO() if args.quiet else sys.stderr) for _ in turns]
    asyncio.run(_drive(agent, turns, views, live))
    if args.json:  # one object per turn
        for turn, view in enumerate(views):
            print(json.dumps({**view.as_json(), "turn": turn, "model": agent.engine.model_name,
                              "tools": agent.tools.names, "format": agent.context_format or "messages"}))
    return EXIT_OK
