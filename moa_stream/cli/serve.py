"""`moa-stream serve`: the MoA pipeline behind an OpenAI-compatible HTTP API (uvicorn)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
from typing import TYPE_CHECKING

from .options import add_moa_arguments, add_tool_agent_arguments, build_moa, positive_int, tool_cache

if TYPE_CHECKING:
    from moa_stream import MoA
    from moa_stream.server import ServerSettings

API_KEY_ENV = "MOA_STREAM_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `serve`'s options."""
    add_moa_arguments(p)
    add_tool_agent_arguments(p, "the config's tool-using agents that set none")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="per-request time limit (300 s)")
    p.add_argument("--max-concurrency", type=positive_int, default=8, metavar="N",
                   help="requests in flight at once; more get HTTP 429 (default 8)")
    p.add_argument("--model-id", default="moa-stream", help="model id clients ask for (default moa-stream)")
    p.add_argument("--max-body-bytes", type=positive_int, default=None, metavar="N",
                   help="larger request bodies get HTTP 413, unread (default 4 MiB)")
    p.add_argument("--compile-timeout", type=float, default=None, metavar="S",
                   help="a response_format or tools grammar compiling longer is a 400 (default 10 s)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; 2 for bad settings or config."""
    from pydantic import ValidationError

    from moa_stream import ConfigError
    from moa_stream.server import ServerSettings

    try:
        optional = {"max_body_bytes": args.max_body_bytes, "compile_timeout_s": args.compile_timeout}
        settings = ServerSettings(host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV),
                                  request_timeout_s=args.timeout, max_concurrency=args.max_concurrency,
                                  model_id=args.model_id, max_tokens=args.max_tokens,
                                  agent_format=args.agent_format, tool_cache=tool_cache(args),
                                  **{k: v for k, v in optional.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad server settings: {problems}") from None
    if not _is_loopback(settings.host) and settings.api_key is None:
        print(f"moa-stream serve: warning: listening on {settings.host} without an API key; anyone who can reach "
              f"this port can use the model (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    moa = build_moa(args)
    print(f"moa-stream serve: http://{settings.host}:{settings.port}/v1 (models: {settings.model_id}, "
          f"{settings.model_id}:<mode>)", file=sys.stderr)
    asyncio.run(_serve(moa, settings, "info" if args.verbose else "warning"))
    return 0


async def _serve(moa: MoA, settings: ServerSettings, log_level: str) -> None:
    import uvicorn

    from moa_stream.server import create_app

    config = uvicorn.Config(create_app(moa, settings), host=settings.host, port=settings.port, log_level=log_level)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was there before; a
    # no-op one lets us close the engines and exit 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        await uvicorn.Server(config).serve()
    finally:
        signal.signal(signal.SIGTERM, previous)
        await moa.aclose()
