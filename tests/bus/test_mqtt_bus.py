"""The MQTT event bus against a real broker (amqtt, in-process on a free loopback port) and the real model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from moa_stream import (
    AgentError,
    AgentMetrics,
    AggregatorDelta,
    ChunkIngested,
    Done,
    FirstToken,
    Metrics,
    MoA,
    MoAConfig,
    ProposerDelta,
)
from moa_stream.bus import (
    BadMqttUrl,
    BrokerUnreachable,
    EventPublisher,
    MalformedEvent,
    decode_event,
    decode_message,
    encode_event,
    event_topic,
    parse_url,
    publish_stream,
    subscribe,
)

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Why is the sky blue?"

SAMPLE_EVENTS = [
    ProposerDelta(agent="analyst", layer=0, text="Rayleigh “scattering” ☀\n", t=0.125),
    ChunkIngested(agent="analyst", layer=0, index=2, tokens=4, t=0.5, final=True),
    AggregatorDelta(text=" The sky", t=0.75),
    FirstToken(ttft_s=0.7312345678901234),
    AgentError(agent="explainer", layer=1, error="stalled for 30 s", kind="timeout"),
    Done(answer="The sky is blue because...", metrics=Metrics(
        mode="staircase", ttft_s=0.73, total_s=2.5, answer_tokens=12, chunks_ingested=5,
        agents={"analyst": AgentMetrics(role="proposer", prompt_tokens=40, completion_tokens=16,
                                        finish_reason="length"),
                "aggregator": AgentMetrics(role="aggregator", prefill_computed=90, decode_tokens=12)})),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
async def broker_url() -> AsyncIterator[str]:
    """A real MQTT 3.1.1 broker (amqtt) serving anonymous clients on loopback for the session."""
    from amqtt.broker import Broker

    port = free_port()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    yield f"mqtt://127.0.0.1:{port}"
    await broker.shutdown()


def tiny_config(answer_tokens: int = 12) -> MoAConfig:
    """Two proposers and an aggregator with short outputs (a turn takes seconds on the CPU)."""
    cfg = MoAConfig.default(proposers=2, max_tokens=12)
    return cfg.model_copy(update={
        "aggregator": cfg.aggregator.model_copy(update={"max_tokens": answer_tokens}),
        "staircase": cfg.staircase.model_copy(update={"first_chunk_tokens": 4, "chunk_tokens": 4,
                                                      "aggregator_tokens_per_intake": 4}),
    })


async def collect(url: str, run_id: str, ready: asyncio.Event, **kw: object) -> list[object]:
    return [ev async for ev in subscribe(url, run_id, ready=ready, idle_timeout=120, **kw)]


# -- codec ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ev", SAMPLE_EVENTS, ids=lambda e: type(e).__name__)
def test_codec_round_trips_every_event_type(ev):
    topic = event_topic("lab/moa", "run1", ev)
    payload = encode_event(ev, run_id="run1", seq=7)
    msg = decode_message(topic, payload)
    assert msg.event == ev and type(msg.event) is type(ev)
    assert (msg.run_id, msg.seq) == ("run1", 7)
    assert decode_event(topic, payload) == ev
    assert topic == f"lab/moa/run1/{msg.kind}"


def test_codec_topics_name_the_event_kind():
    kinds = [event_topic("moa", "r", ev).rsplit("/", 1)[1] for ev in SAMPLE_EVENTS]
    assert kinds == ["proposer_delta", "chunk_ingested", "aggregator_delta", "first_token", "agent_error", "done"]


@pytest.mark.parametrize(("topic", "payload", "says"), [
    ("moa/r/done", b"not json", "not JSON"),
    ("moa/r/done", b"\xff\xfe", "not JSON"),
    ("moa/r/done", b"[1, 2]", "not an object"),
    ("moa/r/done", b'{"v": 99, "kind": "done", "run_id": "r", "seq": 0, "event": {}}', "protocol version"),
    ("moa/r/telemetry", b'{"v": 1, "kind": "telemetry", "run_id": "r", "seq": 0, "event": {}}', "unknown kind"),
    ("moa/r/done", encode_event(AggregatorDelta(text="x", t=0.0)), "topic disagrees"),
    ("moa/r/first_token", b'{"v": 1, "kind": "first_token", "run_id": "r", "seq": -1, "event": {"ttft_s": 1}}',
     "bad seq"),
    ("moa/r/first_token", b'{"v": 1, "kind": "first_token", "run_id": "r", "seq": 0, "event": {"ttft": 1}}',
     "not a valid first_token"),
    ("moa/r/done", b'{"v": 1, "kind": "done", "run_id": "r", "seq": 0, "event": {"answer": "a", "metrics": '
     b'{"mode": "staircase", "total_s": "soon"}}}', "not a valid done"),
])
def test_malformed_payloads_raise_a_typed_error(topic, payload, says):
    with pytest.raises(MalformedEvent, match=says):
        decode_event(topic, payload)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "127.0.0.1:1883", "mqtt://:1883", "mqtt://h:port",
                                 "mqtt://h:1883/topic"])
def test_bad_broker_urls_raise_a_typed_error(url):
    with pytest.raises(BadMqttUrl, match="mqtt://HOST"):
        parse_url(url)


def test_broker_urls_parse():
    assert parse_url("mqtt://10.0.0.2").port == 1883
    tls = parse_url("mqtts://u%40x:p@broker.example:9000")
    assert (tls.host, tls.port, tls.tls, tls.username, tls.password) == ("broker.example", 9000, True, "u@x", "p")
    with pytest.raises(BadMqttUrl, match="prefix"):
        EventPublisher("mqtt://h", prefix="moa/#")
    with pytest.raises(BadMqttUrl, match="run id"):
        EventPublisher("mqtt://h", run_id="a/b")


# -- unreachable brokers: typed error, quickly ---------------------------------------------------------------


async def test_refused_connection_is_a_typed_error_naming_the_url():
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(BrokerUnreachable, match=re.escape(url)):
        async with EventPublisher(url, connect_timeout=2):
            pass
    with pytest.raises(BrokerUnreachable, match="Start one"):
        async for _ in subscribe(url, connect_timeout=2):
            pass
    assert time.perf_counter() - t0 < 4


async def test_silent_broker_times_out_instead_of_hanging():
    """A TCP server that accepts and never answers CONNACK: the connect is bounded by connect_timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = time.perf_counter()
        with pytest.raises(BrokerUnreachable, match=r"no CONNACK within 0\.5 s"):
            async with EventPublisher(f"mqtt://127.0.0.1:{port}", connect_timeout=0.5):
                pass
        assert time.perf_counter() - t0 < 3
        assert accepted, "the client did reach the silent server"
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


# -- through a real broker -----------------------------------------------------------------------------------


async def test_events_cross_the_broker_in_order_and_done_is_retained(broker_url):
    ready = asyncio.Event()
    async with EventPublisher(broker_url, prefix="t-order") as pub:
        watcher = asyncio.create_task(collect(broker_url, pub.run_id, ready, prefix="t-order"))
        await asyncio.wait_for(ready.wait(), 10)
        many = [AggregatorDelta(text=f"w{i} ", t=i / 100) for i in range(200)]
        for ev in [*SAMPLE_EVENTS[:-1], *many, SAMPLE_EVENTS[-1]]:
            await pub.publish(ev)
    assert pub.published == len(SAMPLE_EVENTS) + len(many)
    got = await asyncio.wait_for(watcher, 30)
    assert got == [*SAMPLE_EVENTS[:-1], *many, SAMPLE_EVENTS[-1]]

    # A watcher arriving after the run learns how it ended from the retained Done.
    late = await asyncio.wait_for(collect(broker_url, pub.run_id, asyncio.Event(), prefix="t-order"), 10)
    assert late == [SAMPLE_EVENTS[-1]]


async def test_any_run_watcher_skips_old_retained_runs_and_follows_the_next(broker_url):
    async with EventPublisher(broker_url, prefix="t-any") as old:
        await old.publish(Done(answer="old run", metrics=Metrics(mode="single")))
    ready = asyncio.Event()
    watcher = asyncio.create_task(collect(broker_url, "+", ready, prefix="t-any"))
    await asyncio.wait_for(ready.wait(), 10)
    async with EventPublisher(broker_url, prefix="t-any") as new:
        await new.publish(FirstToken(ttft_s=0.1))
        await new.publish(Done(answer="new run", metrics=Metrics(mode="classic")))
    got = await asyncio.wait_for(watcher, 30)
    assert [type(e) for e in got] == [FirstToken, Done] and got[-1].answer == "new run"


async def test_a_real_moa_turn_published_and_received_matches(broker_url, engine):
    """The engine's turn, published while it streams, arrives whole: same events, same answer and metrics."""
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    ready = asyncio.Event()
    async with EventPublisher(broker_url) as pub:
        watcher = asyncio.create_task(collect(broker_url, pub.run_id, ready))
        await asyncio.wait_for(ready.wait(), 10)
        local = [ev async for ev in publish_stream(moa.stream(QUESTION, mode="staircase"), pub)]
    remote = await asyncio.wait_for(watcher, 60)
    assert engine.stats().sequences_open == 0, "the published turn leaked sequences"

    assert remote == local
    done = remote[-1]
    assert isinstance(done, Done) and done.answer and done.answer == local[-1].answer
    assert done.metrics == local[-1].metrics and done.metrics.ttft_s is not None
    kinds = [type(e) for e in remote]
    assert kinds.index(FirstToken) < kinds.index(Done)
    assert ProposerDelta in kinds and ChunkIngested in kinds and AggregatorDelta in kinds
    assert "".join(e.text for e in remote if isinstance(e, AggregatorDelta)) == done.answer


async def test_breaking_out_of_a_published_stream_frees_the_agents(broker_url, engine):
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    async with EventPublisher(broker_url, prefix="t-break") as pub:
        stream = publish_stream(moa.stream(QUESTION), pub)
        async for ev in stream:
            if isinstance(ev, ProposerDelta):
                break
        await stream.aclose()
    assert pub.published >= 1
    assert engine.stats().sequences_open == 0


# -- the CLI: `run --mqtt` and `watch` as users run them -----------------------------------------------------


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    return path


async def cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "cli.py"), *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_watch_prints_a_run_published_by_another_process(broker_url, tmp_path):
    """Two processes, as on two hosts: `watch` subscribes first, `run --mqtt --json` answers and publishes."""
    watch = await cli("watch", broker_url, "--prefix", "t-cli", "--timeout", "240")
    try:
        line = await asyncio.wait_for(watch.stderr.readline(), 60)
        assert b"[watching the next run" in line, line
        run = await cli("run", "--config", str(config_file(tmp_path)), "--json", "--mqtt", broker_url,
                        "--mqtt-prefix", "t-cli", QUESTION)
        run_out, run_err = await asyncio.wait_for(run.communicate(), 300)
        assert run.returncode == 0, run_err.decode()
        watch_out, watch_err = await asyncio.wait_for(watch.communicate(), 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            watch.kill()
    assert watch.returncode == 0, watch_err.decode()
    result = json.loads(run_out)
    run_id = run_err.decode().split("[mqtt: run ", 1)[1].split()[0]
    assert f"t-cli/{run_id}/#" in run_err.decode()

    text = watch_out.decode()
    assert f"final answer: {result['answer']}" in text
    assert text.index("[TTFT ") < text.index("final answer:")
    assert f"TTFT {result['metrics']['ttft_s']:.2f} s" in text
    before_ttft = text.split("[TTFT", 1)[0]
    assert "analyst: " in before_ttft and "explainer: " in before_ttft, "staircase: first chunks before the answer"
    assert "answer: " in text
    assert "\x1b[" not in text, "no colour codes in a pipe"


async def test_run_with_unreachable_broker_fails_with_exit_1_and_bad_url_with_2(tmp_path):
    cfg = str(config_file(tmp_path))
    bad = await cli("run", "--config", cfg, "--mqtt", "tcp://localhost", QUESTION)
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 2 and b"mqtt://HOST" in err
    down = await cli("run", "--config", cfg, "--mqtt", f"mqtt://127.0.0.1:{free_port()}", QUESTION)
    _, err = await asyncio.wait_for(down.communicate(), 300)
    assert down.returncode == 1 and b"unreachable" in err, err.decode()


def test_watch_panels_add_remote_agents_as_they_appear():
    """On a terminal, `watch` reuses chat's panels; the agents come from the events, not a local config."""
    import io

    from rich.console import Console

    from moa_stream.cli.watch import WatchPanels

    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    panels = WatchPanels(console)
    for ev in SAMPLE_EVENTS:
        panels.apply(ev)
    assert [(a.name, a.layer) for a in panels.view.agents] == [("analyst", 0), ("explainer", 1)]
    console.print(panels.view)
    screen = console.file.getvalue()
    assert "L0 analyst" in screen and "L1 explainer" in screen and "timeout: stalled" in screen
    assert "The sky is blue because..." in screen and "staircase | TTFT 0.73 s" in screen
