"""The server on its own thread and event loop, over a tiny random model: for synchronous clients (schemathesis).

A synchronous test cannot reach a server running on the test session's event loop (that loop is idle while the
test runs), so this one owns a loop, an engine and a pipeline of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine.transformers_engine import TransformersEngine
from moa_stream import MoA, MoAConfig
from moa_stream.server import ServerSettings
from moa_stream.server.loopback import serving
from tests.conftest import tiny_llama


def tiny_moa_engine(seed: int = 0, kv_cache_bytes: int = 64 << 20) -> TransformersEngine:
    """A tiny random model with the default model's whole vocabulary, so real chat prompts fit it."""
    from transformers import AutoTokenizer

    from engine import models

    vocab = len(AutoTokenizer.from_pretrained(models.resolve(None)))
    return TransformersEngine(tiny_llama(seed, vocab=vocab), block_size=16, kv_cache_bytes=kv_cache_bytes)


def tiny_config(tokens: int = 4) -> MoAConfig:
    """Two proposers and an aggregator writing `tokens` tokens at most, with small staircase chunks."""
    cfg = MoAConfig.default(proposers=2, max_tokens=tokens)
    return cfg.model_copy(update={"staircase": cfg.staircase.with_chunk(2)})


@contextmanager
def server_thread(settings: ServerSettings | None = None, tokens: int = 4) -> Iterator[dict[str, Any]]:
    """Run the server on a thread; yields {'url', 'moa'}; stops it and shuts its engine down on exit."""
    ready = threading.Event()
    info: dict[str, Any] = {}

    async def main() -> None:
        engine = tiny_moa_engine()
        moa = MoA.from_config(tiny_config(tokens), engines={"default": engine})
        stop = asyncio.Event()
        info["stop"] = lambda: info["loop"].call_soon_threadsafe(stop.set)
        info["loop"] = asyncio.get_running_loop()
        try:
            async with serving(moa, settings) as srv:
                info.update(url=srv.url, moa=moa, server=srv)
                ready.set()
                await stop.wait()
        finally:
            await engine.shutdown()
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="moa-server", daemon=True)
    thread.start()
    ready.wait(120)
    if "url" not in info:
        raise RuntimeError("the server thread did not start")
    try:
        yield info
    finally:
        info["stop"]()
        thread.join(60)
