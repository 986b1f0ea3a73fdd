"""Fixtures of the MoA tests: a tiny random model with the real vocabulary, and the misbehaving HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from transformers import AutoTokenizer

from engine import models
from engine.transformers_engine import TransformersEngine
from tests.misbehaving_server import MisbehavingServer
from tests.server.thread_server import tiny_moa_engine


@pytest.fixture(scope="module")
async def tiny() -> AsyncIterator[TransformersEngine]:
    """A tiny random model with the real vocabulary, shared by a module's pipelines."""
    eng = tiny_moa_engine()
    yield eng
    await eng.shutdown()


@pytest.fixture(scope="module")
def fake() -> Iterator[MisbehavingServer]:
    """The misbehaving OpenAI-style server on its own thread (see tests/misbehaving_server.py)."""
    server = MisbehavingServer(AutoTokenizer.from_pretrained(models.resolve(None)))
    server.start()
    yield server
    server.stop()
