"""Moving events over MQTT with aiomqtt: publish a run's events, or subscribe to a run from another host.

The `Done` event is retained on `<prefix>/<run_id>/done`, so a watcher that arrives late still learns how the run
ended. Publishing only queues (a slow broker never slows the run); subscribing restores run order from the
sequence numbers the codec carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Final

import aiomqtt

from ..events import Done, Event
from .address import ANY_RUN, DEFAULT_PREFIX, BrokerAddress, check_prefix, check_run_id, parse_url
from .codec import decode_message, encode_event, event_topic
from .errors import BrokerUnreachable, MalformedEvent, MqttBusError

log = logging.getLogger(__name__)


def _unreachable(addr: BrokerAddress, why: object) -> BrokerUnreachable:
    return BrokerUnreachable(f"MQTT broker at {addr.url} ({addr.host}:{addr.port}) is unreachable: {why}. "
                             "Start one (e.g. `mosquitto -p PORT` or `amqtt`), or check the URL and firewall.")


@contextlib.asynccontextmanager
async def _connected(addr: BrokerAddress, timeout: float) -> AsyncIterator[aiomqtt.Client]:
    client = aiomqtt.Client(addr.host, addr.port, username=addr.username, password=addr.password,
                            identifier=f"moa-stream-{uuid.uuid4().hex[:12]}", timeout=timeout,
                            tls_params=aiomqtt.TLSParameters() if addr.tls else None)
    try:
        # aiomqtt connects in a worker thread; bound the whole handshake so a silent host cannot hang us.
        async with asyncio.timeout(timeout):
            await client.__aenter__()
    except TimeoutError:
        raise _unreachable(addr, f"no CONNACK within {timeout:g} s") from None
    except aiomqtt.MqttError as exc:
        raise _unreachable(addr, exc) from None
    try:
        yield client
    except aiomqtt.MqttError as exc:
        raise _unreachable(addr, f"connection lost ({exc})") from None
    finally:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(timeout):
                await client.__aexit__(None, None, None)


_STOP: Final = object()


class EventPublisher:
    """Publishes one run's events: `async with EventPublisher(url) as pub: await pub.publish(ev)`.

    `publish` only queues (a slow or distant broker never slows the run); a sender task publishes with QoS 1
    in order. Leaving the block waits (bounded) until the broker has acknowledged everything.
    """

    def __init__(self, url: str, *, run_id: str | None = None, prefix: str = DEFAULT_PREFIX,
                 connect_timeout: float = 5.0, qos: int = 1) -> None:
        self.address = parse_url(url)
        self.prefix = check_prefix(prefix)
        self.run_id = check_run_id(run_id, wildcard_ok=False) if run_id is not None else uuid.uuid4().hex[:12]
        self.connect_timeout = connect_timeout
        self.qos = qos
        self.published = 0  # messages the broker acknowledged
        self._seq = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._conn: contextlib.AbstractAsyncContextManager[aiomqtt.Client] | None = None

    @property
    def topic_filter(self) -> str:
        """The filter that matches every topic of this run."""
        return f"{self.prefix}/{self.run_id}/#"

    async def __aenter__(self) -> EventPublisher:
        self._conn = _connected(self.address, self.connect_timeout)
        client = await self._conn.__aenter__()
        self._sender = asyncio.create_task(self._send(client), name=f"mqtt-publish-{self.run_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sender is not None and self._conn is not None, "EventPublisher used outside `async with`"
        self._queue.put_nowait(_STOP)
        error: BaseException | None = None
        try:
            # Bounded: a broker that stops acknowledging must not keep a finished run from exiting.
            async with asyncio.timeout(self.connect_timeout + 0.05 * self._queue.qsize()):
                await asyncio.shield(self._sender)
        except TimeoutError:
            error = _unreachable(self.address, f"{self._queue.qsize()} events not acknowledged in time")
        except MqttBusError as e:
            error = e
        finally:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttBusError):
                await self._sender
            await self._conn.__aexit__(None, None, None)
        if error is not None and exc[0] is None:
            raise error

    async def publish(self, ev: Event) -> None:
        """Queue an event for the broker; raises BrokerUnreachable if the connection has failed."""
        if self._sender is None:
            raise RuntimeError("EventPublisher.publish outside `async with EventPublisher(...)`")
        if self._sender.done():
            self._sender.result()  # raises the sender's error
            raise _unreachable(self.address, "the publisher has stopped")
        payload = encode_event(ev, run_id=self.run_id, seq=self._seq)
        self._seq += 1
        self._queue.put_nowait((event_topic(self.prefix, self.run_id, ev), payload, isinstance(ev, Done)))

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            topic, payload, retain = item  # type: ignore[misc]
            try:
                await client.publish(topic, payload, qos=self.qos, retain=retain)
            except aiomqtt.MqttError as exc:
                raise _unreachable(self.address, f"publishing to {topic} failed ({exc})") from None
            self.published += 1


async def publish_stream(events: AsyncIterator[Event], publisher: EventPublisher) -> AsyncIterator[Event]:
    """Yield `events` on unchanged while publishing each one (so a CLI can print and publish at once)."""
    try:
        async for ev in events:
            await publisher.publish(ev)
            yield ev
    finally:
        # Closing us closes the run's stream too, which cancels its agents and frees their sequences.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def subscribe(url: str, run_id: str = ANY_RUN, *, prefix: str = DEFAULT_PREFIX,
                    connect_timeout: float = 5.0, idle_timeout: float | None = None, gap_timeout: float = 2.0,
                    ready: asyncio.Event | None = None) -> AsyncIterator[Event]:
    """Yield a run's events, in run order, until its Done.

    `run_id="+"` follows the next run that publishes (earlier runs' retained Done messages are ignored); a
    named run that has already finished yields its retained Done at once. `ready` is set once the broker has
    confirmed the subscription. `idle_timeout` raises TimeoutError after that long without a message; a
    sequence gap (a lost message) is skipped after `gap_timeout` seconds. Malformed messages are logged and
    skipped: other clients may share the broker.
    """
    addr = parse_url(url)
    check_prefix(prefix)
    check_run_id(run_id, wildcard_ok=True)
    async with _connected(addr, connect_timeout) as client:
        await client.subscribe(f"{prefix}/{run_id}/+", qos=1)
        if ready is not None:
            ready.set()
        following = None if run_id == ANY_RUN else run_id
        expected: int | None = None
        pending: dict[int, Event] = {}
        messages = aiter(client.messages)
        while True:
            try:
                async with asyncio.timeout(gap_timeout if pending else idle_timeout):
                    msg = await anext(messages)
            except TimeoutError:
                if not pending:
                    raise TimeoutError(f"no event from run {run_id!r} on {url} in {idle_timeout:g} s") from None
                log.warning("run %s: events %d..%d never arrived; going on without them",
                            following, expected, min(pending) - 1)
                expected = min(pending)
            else:
                try:
                    got = decode_message(msg.topic.value, msg.payload)  # type: ignore[arg-type]
                except MalformedEvent as exc:
                    log.warning("skipping: %s", exc)
                    continue
                if msg.retain:
                    # A retained message is an earlier run's Done: the answer to "how did run X end?"
                    if following is not None and got.run_id == following and isinstance(got.event, Done):
                        yield got.event
                        return
                    continue
                following = following or got.run_id
                if got.run_id != following:
                    continue
                if expected is None:
                    expected = got.seq  # joined mid-run or at its start: take it from here
                if got.seq < expected:
                    continue  # a QoS 1 duplicate, or older than where we joined
                pending[got.seq] = got.event
            while expected is not None and expected in pending:
                ev = pending.pop(expected)
                expected += 1
                yield ev
                if isinstance(ev, Done):
                    return
