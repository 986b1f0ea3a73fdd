"""Fixtures of the MoA tests: a tiny random model with the real vocabulary, and the misbehaving HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.transformers_engine import TransformersEngine
from tests.server.thread_server import tiny_moa_engine


@pytest.fixture(scope="module")
async def tiny() -> AsyncIterator[TransformersEngine]:
    """A tiny random model with the real vocabulary, shared by a module's pipelines."""
    eng = tiny_moa_engine()
    yield eng
    await eng.shutdown()


