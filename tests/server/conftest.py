"""Fixtures of the server tests: a pipeline on the session's default-model engine, and a live server for it."""

from __future__ import annotations

import pytest

from moa_stream import MoA

from .live_server import server_config, serving


@pytest.fixture
async def moa(engine):
    m = MoA.from_config(server_config(), engines={"default": engine})
    yield m
    assert engine.stats().sequences_open == 0, "a request leaked sequences"


@pytest.fixture
async def live(moa):
    async with serving(moa, max_concurrency=16) as srv:
        yield srv
