"""`moa-stream run "question"`: one answer streamed to stdout, or the answer and its metrics as JSON."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import sys
from typing import TYPE_CHECKING

from .options import add_moa_arguments, build_moa

if TYPE_CHECKING:
    from moa_stream import MoA

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `run`'s options."""
    p.add_argument("question", nargs="?", default=None,
                   help="the question; '-' or nothing reads it from stdin when stdin is a pipe")
    add_moa_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object: answer, metrics, agent errors")
    p.add_argument("-q", "--quiet", action="store_true", help="no TTFT/status line on stderr")
    from .mqtt_options import add_publish_arguments

    add_publish_arguments(p)


def _question(args: argparse.Namespace) -> str | None:
    if args.question not in (None, "-"):
        return str(args.question)
    if sys.stdin.isatty():
        return None
    return sys.stdin.read()


async def _stream(moa: MoA, question: str, args: argparse.Namespace) -> int:
    from .mqtt_options import published
    from .turn_view import PlainView

    view = PlainView(sys.stdout, io.StringIO() if args.quiet else sys.stderr)
    try:
        async with published(moa.stream(question, max_tokens=args.max_tokens), args, view.err) as events:
            async for ev in events:
                view.apply(ev)
    finally:
        await moa.aclose()
    return EXIT_OK


async def _json(moa: MoA, question: str, args: argparse.Namespace) -> int:
    from moa_stream import collect

    from .mqtt_options import published

    try:
        async with published(moa.stream(question, max_tokens=args.max_tokens), args, sys.stderr) as events:
            result = await collect(events)
    finally:
        await moa.aclose()
    out = {
        "answer": result.answer,
        "metrics": {**result.metrics.model_dump(), "tokens_per_s": result.metrics.tokens_per_s,
                    "prefill_saved": result.metrics.prefill_saved},
        "errors": [dataclasses.asdict(e) for e in result.errors],
    }
    print(json.dumps(out))
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Answer one question; 0 ok, 2 bad usage or config, 1 runtime failure."""
    from moa_stream import MoAError
    from moa_stream.bus import BadMqttUrl, MqttBusError

    from .mqtt_options import check_publish_arguments

    try:
        check_publish_arguments(args)  # a bad URL is a usage error before the model loads
    except BadMqttUrl as exc:
        print(f"moa-stream run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    question = _question(args)
    if question is None or not question.strip():
        print("moa-stream run: the question is empty; pass it as an argument or pipe it on stdin",
              file=sys.stderr)
        return EXIT_USAGE
    moa = build_moa(args)
    try:
        return asyncio.run((_json if args.json else _stream)(moa, question, args))
    except (MoAError, MqttBusError) as exc:
        print(f"moa-stream run: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
