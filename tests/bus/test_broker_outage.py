"""Issue 24: a broker killed and restarted mid-run loses nothing the publisher buffered, and never stops the run.

The broker is Debian's real `mosquitto` (apt-get install -y mosquitto), started by the test on a free loopback
port with persistence on, stopped with SIGTERM (it saves its sessions) and started again on the same port and
store. The watcher holds a persistent session, so the broker queues what is published while it is away; the
publisher buffers what is published while the broker is away and resends it after reconnecting. Figures are
printed as lines starting `OUTAGE |` (run with -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from moa_stream import AggregatorDelta, Done, Metrics, MoA, ProposerDelta
from moa_stream.bus import EventPublisher, publish_stream, subscribe
from moa_stream.bus.transport import Backoff
from tests.bus.test_mqtt_bus import QUESTION, free_port, tiny_config

FAST = Backoff(first=0.05, factor=2.0, cap=0.5)
GUARD_S = 60  # every wait below is for an event, bounded so a broken bus fails instead of hanging


class Mosquitto:
    """A mosquitto process on a fixed port and persistence directory that can be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        # `user`: started as root, mosquitto would switch to its own user and could not write its store here.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\nmax_queued_messages 100000\n"
                             f"user {getpass.getuser()}\n")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it and return once it accepts connections."""
        self.proc = await asyncio.create_subprocess_exec("mosquitto", "-c", str(self.conf),
                                                         stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(GUARD_S):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """SIGTERM (mosquitto writes its store) and wait for the process to end."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), GUARD_S)


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    """A running mosquitto with persistence, killed at the end whatever happened."""
    if shutil.which("mosquitto") is None:
        pytest.skip("needs Debian's mosquitto broker: apt-get install -y mosquitto")
    broker = Mosquitto(tmp_path)
    await broker.start()
    yield broker
    if broker.proc is not None and broker.proc.returncode is None:
        broker.proc.kill()
        await broker.proc.wait()


async def until(cond: Callable[[], bool]) -> None:
    """Wait for a condition the bus's own tasks make true (bounded by GUARD_S)."""
    async with asyncio.timeout(GUARD_S):
        while not cond():
            await asyncio.sleep(0.01)


async def paced(pub: EventPublisher, events: list[AggregatorDelta]) -> None:
    """Publish while the broker is up without overrunning a small buffer (the producer waits for acks)."""
    for ev in events:
        await until(lambda: pub.buffered < pub.max_buffer)
        await pub.publish(ev)


def deltas(start: int, n: int) -> list[AggregatorDelta]:
    return [AggregatorDelta(text=f"w{i} ", t=i / 100) for i in range(start, start + n)]


@pytest.mark.parametrize("buffer, during", [(1000, 50), (20, 50)], ids=["buffer-holds-it", "buffer-overflows"])
async def test_events_buffered_through_a_broker_restart_arrive_in_order(mosquitto: Mosquitto, buffer: int,
                                                                        during: int) -> None:
    got: list[object] = []
    ready = asyncio.Event()

    async def watch(run_id: str) -> None:
        async for ev in subscribe(mosquitto.url, run_id, ready=ready, idle_timeout=GUARD_S, gap_timeout=1.0,
                                  session=f"watch-{uuid.uuid4().hex[:8]}", backoff=FAST):
            got.append(ev)

    before, outage, after = deltas(0, 100), deltas(100, during), deltas(100 + during, 100)
    async with EventPublisher(mosquitto.url, connect_timeout=1.0, backoff=FAST, max_buffer=buffer) as pub:
        watcher = asyncio.create_task(watch(pub.run_id))
        await asyncio.wait_for(ready.wait(), GUARD_S)
        await paced(pub, before)
        await until(lambda: len(got) == len(before))
        await mosquitto.stop()
        down = time.perf_counter()
        for ev in outage:  # the run goes on: publishing never raises nor waits for the broker
            await pub.publish(ev)
        await until(lambda: pub.outages >= 1)  # the publisher noticed, and is trying to reconnect
        await asyncio.sleep(1.0)  # the outage lasts a while (a scenario length, not an assertion)
        assert pub.buffered <= buffer and pub.dropped == max(0, during - buffer)
        await mosquitto.start()
        up = time.perf_counter()
        await paced(pub, after)
        done = await pub.publish(Done(answer="the end", metrics=Metrics(mode="staircase")))
    await asyncio.wait_for(watcher, GUARD_S)

    dropped = max(0, during - buffer)
    kept = outage[:len(outage) - dropped]  # the buffer keeps the first events of the outage, drops the rest
    assert isinstance(done, Done) and done.metrics.bus_events_dropped == dropped
    assert got == [*before, *kept, *after, done], "every buffered event arrived, once, in order"
    assert pub.reconnects >= 1 and pub.published >= len(got)
    sent = len(before) + len(outage) + len(after) + 1
    print(f"\nOUTAGE | buffer {buffer} | sent {sent} | received {len(got)} | dropped {pub.dropped} "
          f"(Done says {done.metrics.bus_events_dropped}) | outage {up - down:.2f} s | "
          f"publisher reconnects {pub.reconnects}")


async def test_a_broker_outage_mid_run_never_stops_the_moa_run(mosquitto: Mosquitto, engine: object) -> None:
    """The issue's case: the broker dies after 10 events of a real MoA turn and comes back 10 events later."""
    moa = MoA.from_config(tiny_config(), engines={"default": engine})
    got: list[object] = []
    ready = asyncio.Event()
    local: list[object] = []
    async with EventPublisher(mosquitto.url, connect_timeout=1.0, backoff=FAST) as pub:
        async def watch() -> None:
            async for ev in subscribe(mosquitto.url, pub.run_id, ready=ready, idle_timeout=GUARD_S,
                                      session=f"watch-{uuid.uuid4().hex[:8]}", backoff=FAST):
                got.append(ev)

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(ready.wait(), GUARD_S)
        async for ev in publish_stream(moa.stream(QUESTION, mode="staircase"), pub):
            local.append(ev)
            if len(local) == 10:
                await mosquitto.stop()
            elif len(local) == 20:
                await mosquitto.start()
        if mosquitto.proc is not None and mosquitto.proc.returncode is not None:
            await mosquitto.start()  # the turn was shorter than 20 events: the broker comes back at its end
    await asyncio.wait_for(watcher, GUARD_S)
    assert isinstance(local[-1], Done) and local[-1].answer, "the run finished"
    assert got == local, "the watcher got every event of the turn, in order"
    assert ProposerDelta in {type(e) for e in got} and pub.reconnects >= 1
    print(f"\nOUTAGE | moa turn | sent {len(local)} | received {len(got)} | dropped {pub.dropped} | "
          f"reconnects {pub.reconnects}")
