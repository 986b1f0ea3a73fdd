"""Faults stay in their request: failing proposers, a backend that dies, a client that stops reading, and many
clients that leave at random points. After each, the engine keeps serving and holds no sequence.

The pipeline runs behind the real server on loopback; local agents run a tiny random model (fast), HTTP
proposers run against tests/misbehaving_server.py, in this process or, to be killed, in a child process.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai

from engine.transformers_engine import TransformersEngine
from moa_stream import MoA, MoAConfig
from moa_stream.backends import build_engines
from moa_stream.server import ServerSettings, create_app
from moa_stream.server.loopback import serving
from tests.llama_server import free_port
from tests.server.thread_server import tiny_config

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "Why is the sky blue?"}]


def open_sequences(moa: MoA) -> int:
    """Sequences open on every engine of the pipeline."""
    return sum(s.sequences_open for s in moa.engine_stats().values())


async def settle(moa: MoA, srv: Any) -> None:
    """Wait (bounded) until no request is in flight and no sequence is open."""
    for _ in range(1500):
        if srv.in_flight == 0 and open_sequences(moa) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"leaked: in flight {srv.in_flight}, sequences open {open_sequences(moa)}")


def mixed(tiny: TransformersEngine, http: dict[str, dict[str, Any]], agent_timeout_s: float = 60) -> MoA:
    """A staircase MoA: one good proposer and the aggregator on the tiny model, one proposer per HTTP backend."""
    layer = [{"name": "good", "backend": "default", "temperature": 0.0, "max_tokens": 6}]
    layer += [{"name": name, "backend": name, "temperature": 0.0, "max_tokens": 12} for name in http]
    cfg = MoAConfig.parse({
        "backends": {"default": {"kind": "transformers"}, **http}, "layers": [layer],
        "aggregator": {"name": "aggregator", "temperature": 0.0, "max_tokens": 6}, "mode": "staircase",
        "staircase": {"first_chunk_tokens": 2, "chunk_tokens": 2, "agent_timeout_s": agent_timeout_s}})
    remote = build_engines({name: cfg.backends[name] for name in http})
    return MoA(cfg, {"default": tiny, **remote})


async def read_stream(client: openai.AsyncOpenAI, **kw: Any) -> tuple[str, dict[str, Any]]:
    """A streamed answer's text and the `moa` object of its last chunk."""
    text, info = "", {}
    stream = await client.chat.completions.create(model="moa-stream", messages=HI, stream=True, **kw)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        info = (chunk.model_extra or {}).get("moa") or info
    return text, info


def client_for(url: str) -> openai.AsyncOpenAI:
    """The official client, no retries."""
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


async def test_proposers_failing_mid_stream_fail_alone_and_the_engine_keeps_serving(tiny, fake):
    moa = mixed(tiny, {"cut": {"kind": "http", "base_url": fake.url("cut"), "options": {"max_retries": 0}},
                       "broken": {"kind": "http", "base_url": fake.url("error-event"),
                                  "options": {"max_retries": 0}}})
    try:
        async with serving(moa, ServerSettings()) as srv:
            client = client_for(srv.url)
            (text, info), (other, _) = await asyncio.gather(read_stream(client), read_stream(client))
            failed = {e["agent"]: e["error"] for e in info["errors"]}
            print(f"\nfault: proposers failing mid-stream -> agent errors {failed}")
            assert set(failed) == {"cut", "broken"}, failed
            assert "cut mid-way" in failed["cut"] and "out of memory" in failed["broken"]
            assert text and other, "both answers complete from the proposer that worked"
            await settle(moa, srv)
    finally:
        for name in ("cut", "broken"):
            await moa.engines[name].shutdown()
    assert tiny.stats().sequences_open == 0


CHILD_SERVER = """
import asyncio, sys, uvicorn
from transformers import AutoTokenizer
from engine import models
from tests.misbehaving_server import ServerState, make_app

async def main():
    state = ServerState(AutoTokenizer.from_pretrained(models.resolve(None)))
    state.release = asyncio.Event()
    config = uvicorn.Config(make_app(state), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    await uvicorn.Server(config).serve()

asyncio.run(main())
"""


async def test_a_backend_killed_mid_run_fails_its_proposer_only(tiny):
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD_SERVER, str(port)], cwd=ROOT)
    try:
        async with httpx.AsyncClient() as http:  # bounded wait for the child's port (imports take a while)
            for _ in range(1200):
                assert child.poll() is None, "the child server died at start"
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/stall/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the child server did not start in 120 s")
        moa = mixed(tiny, {"doomed": {"kind": "http", "base_url": f"http://127.0.0.1:{port}/stall/v1",
                                      "timeout_s": 120, "options": {"max_retries": 0}}})
        async with serving(moa, ServerSettings()) as srv:
            run = asyncio.create_task(read_stream(client_for(srv.url)))
            for _ in range(1000):  # the doomed proposer's request is streaming (stalled after one chunk)
                if moa.engines["doomed"].stats().sequences_open and tiny.stats().decode_tokens:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            child.kill()  # the backend dies mid-stream
            text, info = await asyncio.wait_for(run, 60)  # well before any stall timeout (120 s)
            failed = {e["agent"]: e["error"] for e in info["errors"]}
            print(f"\nfault: backend killed mid-run -> agent errors {failed}")
            assert set(failed) == {"doomed"} and "no output" not in failed["doomed"], failed
            assert text
            await settle(moa, srv)
        await moa.engines["doomed"].shutdown()
    finally:
        child.kill()
        child.wait(10)


async def test_a_client_that_stops_reading_is_backpressure_not_an_unbounded_buffer(tiny):
    cfg = tiny_config(tokens=4)
    cfg = cfg.model_copy(update={"aggregator": cfg.aggregator.model_copy(
        update={"max_tokens": 300, "ignore_eos": True})})
    moa = MoA(cfg, {"default": tiny})
    app = create_app(moa, ServerSettings())
    body = json.dumps({"model": "moa-stream", "messages": HI, "stream": True}).encode()
    reading = asyncio.Event()  # set: the client reads again
    sent: list[bytes] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:  # a transport whose peer does not read: send waits
        if message["type"] == "http.response.body":
            await reading.wait()
            sent.append(message.get("body", b""))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    call = asyncio.create_task(app(scope, receive, send))
    stats = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    peak, previous_decode = 0, -1
    for _ in range(3000):  # until the aggregator has written its whole answer into the pipeline
        buffered = (await stats.get("/v1/moa/stats")).json()["stream_buffer"]
        peak = max(peak, buffered["events"])
        decode = tiny.stats().decode_tokens
        if peak == buffered["per_stream_limit"] and decode == previous_decode:
            break
        previous_decode = decode
        await asyncio.sleep(0.05)
    limit = buffered["per_stream_limit"]
    print(f"\nfault: client not reading -> server buffer peaked at {peak} events (limit {limit})")
    assert peak == limit, "the bound was reached: without it the buffer would have kept growing"
    reading.set()
    await asyncio.wait_for(call, 120)
    await stats.aclose()
    text = b"".join(sent).decode()
    assert text.rstrip().endswith("data: [DONE]") and '"finish_reason": "length"' in text
    assert tiny.stats().sequences_open == 0


async def test_a_hundred_requests_cancelled_at_random_points_leak_nothing(tiny):
    moa = MoA(tiny_config(tokens=6), {"default": tiny})
    rng = random.Random(11)
    before = tiny.stats()
    cancelled_at: dict[str, int] = {"before_headers": 0, "mid_stream": 0, "waiting_whole_answer": 0, "finished": 0}
    async with serving(moa, ServerSettings(max_concurrency=100)) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:

            async def one(i: int) -> None:
                stream = rng.random() < 0.8
                delay, lines = rng.uniform(0, 1.0), rng.randint(0, 12)
                payload = {"model": "moa-stream", "messages": HI, "stream": stream}

                async def go() -> str:
                    if not stream:
                        await http.post("/v1/chat/completions", json=payload)
                        return "finished"
                    async with http.stream("POST", "/v1/chat/completions", json=payload) as r:
                        n = 0
                        async for _ in r.aiter_lines():
                            n += 1
                            if n >= lines:
                                return "mid_stream"  # leave mid-stream: the connection closes
                    return "finished"

                task = asyncio.create_task(go())
                await asyncio.wait({task}, timeout=delay)
                task.cancel()  # no-op when it is over; the task's own outcome decides what is counted, once
                await asyncio.gather(task, return_exceptions=True)
                if task.cancelled():
                    cancelled_at["waiting_whole_answer" if not stream else "before_headers"] += 1
                else:
                    cancelled_at[task.result()] += 1

            for batch in range(10):
                await asyncio.gather(*(one(batch * 10 + i) for i in range(10)))
        await settle(moa, srv)
    after = tiny.stats()
    print(f"\nfault: 100 requests cancelled at random points {cancelled_at} -> sequences open "
          f"{after.sequences_open}, KV bytes resident {after.kv_bytes_resident} (before {before.kv_bytes_resident})")
    assert sum(cancelled_at.values()) == 100
    assert after.sequences_open == 0 and after.sequences_resident == 0
    assert after.kv_bytes_resident <= before.kv_bytes_resident
