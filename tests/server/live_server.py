"""A real server for tests: uvicorn on 127.0.0.1:0 serving a MoA pipeline, and helpers to wait on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai

from moa_stream import MoA, MoAConfig
from moa_stream.server import ServerSettings
from moa_stream.server.loopback import LoopbackServer
from moa_stream.server.loopback import serving as loopback


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


class Live(LoopbackServer):
    """A running server with the official client at hand."""

    def client(self, api_key: str = "unused", address: str | None = None) -> openai.AsyncOpenAI:
        """The official client, no retries (so a 429 or 504 shows up as the error it is); `address` is the loopback
        address it connects from (127.0.0.2, ...: another client, another tenant without API keys)."""
        http = None if address is None else httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address=address), timeout=300)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300,
                                  http_client=http)


@asynccontextmanager
async def serving(moa: MoA, **settings: object) -> AsyncIterator[Live]:
    """The server on 127.0.0.1:0 with these settings, stopped on exit."""
    async with loopback(moa, ServerSettings(**settings)) as srv:  # type: ignore[arg-type]
        yield Live(srv.url, srv.app)


async def until(predicate, what: str) -> None:
    """Poll a condition a bounded number of loop turns (cleanup runs on later turns, not at once)."""
    for _ in range(1500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")
