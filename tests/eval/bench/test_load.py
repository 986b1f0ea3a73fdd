"""The load run, small: concurrent streaming clients on a tiny model all finish or get 429, TTFT percentiles are
measured, and sequences, KV and sockets come back to where they were."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.transformers_engine import TransformersEngine
from eval.bench.load import run_load
from moa_stream import MoA
from tests.server.thread_server import tiny_config, tiny_moa_engine


@pytest.fixture(scope="module")
async def tiny() -> AsyncIterator[TransformersEngine]:
    """A tiny random model with the real vocabulary."""
    eng = tiny_moa_engine()
    yield eng
    await eng.shutdown()


async def test_sixteen_clients_all_finish_and_everything_returns_to_baseline(tiny):
    report = await run_load(MoA(tiny_config(4), {"default": tiny}), clients=16, requests=32, max_tokens=4,
                            duration_s=300)
    print(f"\nload: {report.to_dict()}")
    assert report.completed == 32 and report.errors == 0 and report.rate_limited == 0
    assert report.ttft_p50_s is not None and report.ttft_p99_s is not None and report.ttft_p50_s <= report.ttft_p99_s
    assert report.back_to_baseline, (report.before, report.after)
    assert report.after is not None and report.after.kv_bytes_resident == 0


async def test_past_the_server_limit_clients_get_429_retry_and_still_all_finish(tiny):
    report = await run_load(MoA(tiny_config(4), {"default": tiny}), clients=12, requests=24, max_tokens=4,
                            max_concurrency=3, duration_s=300)
    print(f"\nload with limit 3: {report.to_dict()}")
    assert report.rate_limited > 0, "12 clients against 3 slots must be refused sometimes"
    assert report.completed == 24 and report.errors == 0
    assert report.back_to_baseline
