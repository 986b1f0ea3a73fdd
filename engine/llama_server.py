"""llama.cpp's own OpenAI server on loopback: the peer the benches measure against, and the tests' real server.

llama-cpp-python's server (`python -m llama_cpp.server`) is what most people run next to llama.cpp; it runs
one sequence at a time, so concurrent requests queue. The engine bench drives it with 1 and 4 concurrent
completions and reports completion tokens/s over the wall time of each round, all requests together.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError

__all__ = ["PeerServer", "free_port", "peer_rates", "start_server"]

READY_TIMEOUT_S = 120.0
# The server as `python -m llama_cpp.server`, with llama.cpp's CPU extra buffer types chosen as our engine chooses
# them (engine/llamacpp_engine/context.py: off on an AMX build, where 0.3.36 segfaults in them), so the peer runs
# the same kernels as the engine it is compared with.
_SERVER_BOOT = """
import runpy, sys
import llama_cpp.llama_cpp as L
from engine.llamacpp_engine.context import use_extra_buffer_types
_defaults = L.llama_model_default_params
def _params():
    p = _defaults()
    p.use_extra_bufts = use_extra_buffer_types()
    return p
L.llama_model_default_params = _params
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")


@dataclass
class PeerServer:
    """A running llama.cpp server on loopback and its log file."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def prefix_hits(self) -> list[tuple[int, int]]:
        """(prompt tokens its cache reused, tokens it computed) per request so far (needs `--verbose True`)."""
        return [(int(a), int(b)) for a, b in _PREFIX_HIT.findall(self.log())]

    def counters(self) -> dict[str, int]:
        """Prompt tokens its prompt cache served and it computed, summed over requests (from a --verbose log)."""
        hits = self.prefix_hits()
        return {"prefill_reused": sum(a for a, _ in hits), "prefill_computed": sum(b for _, b in hits),
                "requests": len(hits)}

    def stop(self) -> None:
        """Stop the server process and remove its log."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(gguf: Path, threads: int, n_ctx: int = 4096, extra_args: Sequence[str] = ()) -> PeerServer:
    """Start llama-cpp-python's server on a free loopback port; waits (bounded) until it answers."""
    import httpx

    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="llama-peer-", suffix=".log")[1])
    cmd = [sys.executable, "-c", _SERVER_BOOT, "--model", str(gguf), "--host", "127.0.0.1", "--port",
           str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--interrupt_requests", "False",
           *extra_args]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    server = PeerServer(f"http://127.0.0.1:{port}/v1", proc, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BackendError(f"llama_cpp.server exited with {proc.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(server.base_url + "/models", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling for readiness, bounded by the deadline above
    server.stop()
    raise BackendError(f"llama_cpp.server not ready after {READY_TIMEOUT_S:g} s")


async def decode_rate(base_url: str, prompts: list[str], max_tokens: int) -> float:
    """Completion tokens/s of len(prompts) concurrent greedy requests writing max_tokens each."""
    import httpx

    async with httpx.AsyncClient(timeout=600.0) as client:
        async def one(prompt: str) -> int:
            body = {"prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 0.0,
                    "repeat_penalty": 1.0}
            resp = await client.post(base_url + "/completions", json=body)
            resp.raise_for_status()
            return int(resp.json()["usage"]["completion_tokens"])

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(p) for p in prompts))
        return sum(counts) / (time.perf_counter() - t0)


def peer_rates(gguf: Path, max_tokens: int, streams: tuple[int, ...] = (1, 4), threads: int | None = None) \
        -> dict[int, float]:
    """llama.cpp server tokens/s at each concurrency (a warm-up request first), on the given GGUF."""
    from .llamacpp_engine.context import default_threads

    server = start_server(gguf, threads or default_threads())
    try:
        async def run() -> dict[int, float]:
            await decode_rate(server.base_url, ["Hello"], 4)  # warm-up: first-request costs
            out = {}
            for n in streams:
                prompts = [f"Request {i}: write a short story about the number {i * 7 + n}." for i in range(n)]
                out[n] = await decode_rate(server.base_url, prompts, max_tokens)
            return out

        return asyncio.run(run())
    finally:
        server.stop()
