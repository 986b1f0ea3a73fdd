"""The server in this process on a free loopback port, for benches and tests (uvicorn on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from moa_stream import MoA

from .app import create_app
from .settings import ServerSettings


@dataclass
class LoopbackServer:
    """A running in-process server: its base URL and its app (whose state holds the limiter)."""

    url: str
    app: FastAPI

    @property
    def in_flight(self) -> int:
        """Requests holding a concurrency slot now."""
        return int(self.app.state.server.limiter.in_flight)


@asynccontextmanager
async def serving(moa: MoA, settings: ServerSettings | None = None) -> AsyncIterator[LoopbackServer]:
    """uvicorn on a socket bound to 127.0.0.1:0 (the OS picks the port), stopped and its socket closed on exit."""
    app = create_app(moa, settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # Keep-alive longer than any client's pause (a 429's Retry-After): a connection closed by the server just as
    # the client reuses it would fail that request for no fault of its own.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=75))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):  # bounded wait for the listening socket
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start on loopback")
        yield LoopbackServer(f"http://127.0.0.1:{sock.getsockname()[1]}", app)
    finally:
        server.should_exit = True
        await task
        sock.close()
