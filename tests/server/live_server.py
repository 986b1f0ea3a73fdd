"""A real server for tests: uvicorn on 127.0.0.1:0 serving a MoA pipeline, and helpers to wait on it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import openai
import uvicorn

from moa_stream import MoA, MoAConfig
from moa_stream.server import ServerSettings, create_app


def server_config(tokens: int = 8, ignore_eos: bool = False) -> MoAConfig:
    """Two proposers and an aggregator writing `tokens` tokens at most, with small staircase chunks."""
    cfg = MoAConfig.default(proposers=2, max_tokens=tokens)
    layer = [a.model_copy(update={"ignore_eos": ignore_eos}) for a in cfg.layers[0]]
    return cfg.model_copy(update={
        "layers": [layer],
        "aggregator": cfg.aggregator.model_copy(update={"max_tokens": tokens, "ignore_eos": ignore_eos}),
        "staircase": cfg.staircase.model_copy(update={"first_chunk_tokens": 4, "chunk_tokens": 4,
                                                      "aggregator_tokens_per_intake": 4}),
    })


@dataclass
class Live:
    """A running server: its base URL and the app (for its limiter)."""

    url: str
    app: object

    @property
    def in_flight(self) -> int:
        return self.app.state.limiter.in_flight  # type: ignore[attr-defined]

    def client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        """The official client, no retries (so a 429 or 504 shows up as the error it is)."""
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300)


@asynccontextmanager
async def serving(moa: MoA, **settings: object) -> AsyncIterator[Live]:
    """uvicorn on a socket bound to 127.0.0.1:0 (the OS picks a free port), stopped on exit."""
    app = create_app(moa, ServerSettings(**settings))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):  # bounded wait for the listening socket
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", app)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def until(predicate, what: str) -> None:
    """Poll a condition a bounded number of loop turns (cleanup runs on later turns, not at once)."""
    for _ in range(1500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")
