"""Moving events over MQTT with aiomqtt: publish a run's events, or subscribe to a run from another host.

The `Done` event is retained on `<prefix>/<run_id>/done`, so a watcher that arrives late still learns how the run
ended. Publishing only queues (a slow broker never slows the run); subscribing restores run order from the
sequence numbers the codec carries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import aiomqtt

from ..events import Done, Event
from .address import ANY_RUN, DEFAULT_PREFIX, BrokerAddress, check_prefix, check_run_id, parse_url
from .codec import decode_message, encode_event, event_topic
from .errors import BrokerUnreachable, MalformedEvent

log = logging.getLogger(__name__)


def _unreachable(addr: BrokerAddress, why: object) -> BrokerUnreachable:
    return BrokerUnreachable(f"MQTT broker at {addr.url} ({addr.host}:{addr.port}) is unreachable: {why}. "
                             "Start one (e.g. `mosquitto -p PORT` or `amqtt`), or check the URL and firewall.")


@dataclass(frozen=True)
class Backoff:
    """Waits between reconnection attempts: `first` seconds, times `factor` after each failure, at most `cap`."""

    first: float = 0.1
    factor: float = 2.0
    cap: float = 5.0

    def delays(self) -> Iterator[float]:
        """The wait before each attempt, forever."""
        delay = self.first
        while True:
            yield delay
            delay = min(self.cap, delay * self.factor)


async def _connect(addr: BrokerAddress, timeout: float, session: str | None = None) -> aiomqtt.Client:
    """A connected client; `session` names a persistent session (the broker queues QoS 1 messages while away)."""
    client = aiomqtt.Client(addr.host, addr.port, username=addr.username, password=addr.password,
                            identifier=session or f"moa-stream-{uuid.uuid4().hex[:12]}", timeout=timeout,
                            clean_session=session is None,
                            tls_params=aiomqtt.TLSParameters() if addr.tls else None)
    try:
        # aiomqtt connects in a worker thread; bound the whole handshake so a silent host cannot hang us.
        async with asyncio.timeout(timeout):
            await client.__aenter__()
    except TimeoutError:
        raise _unreachable(addr, f"no CONNACK within {timeout:g} s") from None
    except aiomqtt.MqttError as exc:
        raise _unreachable(addr, exc) from None
    return client


async def _disconnect(client: aiomqtt.Client, timeout: float) -> None:
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError, RuntimeError):
        async with asyncio.timeout(timeout):
            await client.__aexit__(None, None, None)
    # A dropped connection leaves its error on aiomqtt's private future; read it, or asyncio logs it as lost.
    lost = getattr(client, "_disconnected", None)
    if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
        lost.exception()


async def _reconnect(addr: BrokerAddress, timeout: float, backoff: Backoff, session: str | None = None
                     ) -> aiomqtt.Client:
    """Connect again, waiting `backoff` between attempts, until the broker answers (cancel to give up)."""
    for attempt, delay in enumerate(backoff.delays(), 1):
        await asyncio.sleep(delay)
        try:
            client = await _connect(addr, timeout, session)
        except BrokerUnreachable as exc:
            log.info("reconnect attempt %d to %s failed: %s", attempt, addr.url, exc)
            continue
        log.warning("reconnected to the MQTT broker at %s after %d attempt(s)", addr.url, attempt)
        return client
    raise AssertionError("unreachable")  # pragma: no cover - the backoff never ends


_Message = tuple[str, bytes, bool]  # topic, payload, retain


class EventPublisher:
    """Publishes one run's events: `async with EventPublisher(url) as pub: await pub.publish(ev)`.

    `publish` only buffers (a slow, distant or absent broker never slows or stops the run); a sender task
    publishes the buffer in order with QoS 1 and drops an event from it only once the broker acknowledged it.
    When the connection drops, the sender reconnects with `backoff` and resends from the first unacknowledged
    event (a watcher drops the duplicates by sequence number), so nothing is lost while the buffer holds
    `max_buffer` events; events past that are dropped, counted in `dropped` and reported in the `Done` event's
    `metrics.bus_events_dropped`. Only the first connection must succeed (a wrong URL is an error at once).
    Leaving the block waits up to `drain_timeout` seconds for the broker to acknowledge what is buffered.
    """

    def __init__(self, url: str, *, run_id: str | None = None, prefix: str = DEFAULT_PREFIX,
                 connect_timeout: float = 5.0, qos: int = 1, max_buffer: int = 10_000, drain_timeout: float = 10.0,
                 backoff: Backoff | None = None) -> None:
        self.address = parse_url(url)
        self.prefix = check_prefix(prefix)
        self.run_id = check_run_id(run_id, wildcard_ok=False) if run_id is not None else uuid.uuid4().hex[:12]
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1 event, got {max_buffer}")
        self.connect_timeout = connect_timeout
        self.qos = qos
        self.max_buffer = max_buffer
        self.drain_timeout = drain_timeout
        self.backoff = backoff or Backoff()
        self.published = 0  # messages the broker acknowledged
        self.dropped = 0  # events not buffered because the buffer was full (a long outage)
        self.outages = 0  # times the connection dropped
        self.reconnects = 0
        self._seq = 0
        self._buffer: collections.deque[_Message] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._client: aiomqtt.Client | None = None
        self._sender: asyncio.Task[None] | None = None

    @property
    def topic_filter(self) -> str:
        """The filter that matches every topic of this run."""
        return f"{self.prefix}/{self.run_id}/#"

    @property
    def buffered(self) -> int:
        """Events published but not yet acknowledged by the broker."""
        return len(self._buffer)

    async def __aenter__(self) -> EventPublisher:
        self._client = await _connect(self.address, self.connect_timeout)
        self._sender = asyncio.create_task(self._send(), name=f"mqtt-publish-{self.run_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sender is not None, "EventPublisher used outside `async with`"
        self._closing = True
        self._wakeup.set()
        error: BaseException | None = None
        try:
            # Bounded: a broker that is gone for good must not keep a finished run from exiting.
            async with asyncio.timeout(self.drain_timeout):
                await asyncio.shield(self._sender)
        except TimeoutError:
            error = _unreachable(self.address, f"{len(self._buffer)} events not acknowledged within "
                                               f"{self.drain_timeout:g} s after the run ended")
        except Exception as e:  # the sender's own bug: the run is over, say so
            error = e
        finally:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender
            if self._client is not None:
                await _disconnect(self._client, self.connect_timeout)
        if error is not None and exc[0] is None:
            raise error

    async def publish(self, ev: Event) -> Event:
        """Buffer an event for the broker and return it as published (a `Done` carries the drop count)."""
        if self._sender is None:
            raise RuntimeError("EventPublisher.publish outside `async with EventPublisher(...)`")
        done = isinstance(ev, Done)
        if done and self.dropped:
            ev = replace(ev, metrics=ev.metrics.model_copy(update={"bus_events_dropped": self.dropped}))
        payload = encode_event(ev, run_id=self.run_id, seq=self._seq)
        self._seq += 1  # a dropped event keeps its number, so a watcher sees the gap
        if len(self._buffer) >= self.max_buffer and not done:  # Done always goes: it says how the run ended
            if not self.dropped:
                log.warning("MQTT buffer full (%d events unacknowledged): dropping events until the broker at %s "
                            "is back", len(self._buffer), self.address.url)
            self.dropped += 1
            return ev
        self._buffer.append((event_topic(self.prefix, self.run_id, ev), payload, done))
        self._wakeup.set()
        return ev

    async def _send(self) -> None:
        while True:
            assert self._client is not None
            try:
                await self._drain(self._client)
                return
            except aiomqtt.MqttError as exc:
                self.outages += 1
                log.warning("lost the MQTT broker at %s (%s); %d events buffered, reconnecting", self.address.url,
                            exc, len(self._buffer))
            await _disconnect(self._client, self.connect_timeout)
            self._client = await _reconnect(self.address, self.connect_timeout, self.backoff)
            self.reconnects += 1

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the buffer in order until closing with it empty; raises MqttError when the connection drops."""
        while True:
            while not self._buffer:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            topic, payload, retain = self._buffer[0]
            await client.publish(topic, payload, qos=self.qos, retain=retain)
            self._buffer.popleft()  # acknowledged (QoS 1): only now is it safe to forget
            self.published += 1


async def publish_stream(events: AsyncIterator[Event], publisher: EventPublisher) -> AsyncIterator[Event]:
    """Yield `events` as published (a `Done` with the bus's drop count) while publishing each one, so a CLI can
    print and publish at once."""
    try:
        async for ev in events:
            yield await publisher.publish(ev)
    finally:
        # Closing us closes the run's stream too, which cancels its agents and frees their sequences.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def subscribe(url: str, run_id: str = ANY_RUN, *, prefix: str = DEFAULT_PREFIX,
                    connect_timeout: float = 5.0, idle_timeout: float | None = None, gap_timeout: float = 2.0,
                    ready: asyncio.Event | None = None, session: str | None = None,
                    backoff: Backoff | None = None) -> AsyncIterator[Event]:
    """Yield a run's events, in run order, until its Done.

    `run_id="+"` follows the next run that publishes (earlier runs' retained Done messages are ignored); a
    named run that has already finished yields its retained Done at once. `ready` is set once the broker has
    confirmed the subscription. `idle_timeout` raises TimeoutError after that long without a message (and
    BrokerUnreachable if reconnecting takes that long); a sequence gap (a lost message) is skipped after
    `gap_timeout` seconds. Malformed messages are logged and skipped: other clients may share the broker.
    A dropped connection is reconnected with `backoff`. `session` (a client id) asks for a persistent
    session: a broker that keeps sessions (Mosquitto with persistence) queues the run's events while this
    watcher is away, even across a broker restart, so it misses none.
    """
    addr = parse_url(url)
    check_prefix(prefix)
    check_run_id(run_id, wildcard_ok=True)
    topic = f"{prefix}/{run_id}/+"
    client = await _connect(addr, connect_timeout, session)
    try:
        await client.subscribe(topic, qos=1)
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
            except aiomqtt.MqttError as exc:
                log.warning("lost the MQTT broker at %s (%s); reconnecting", addr.url, exc)
                await _disconnect(client, connect_timeout)
                try:
                    async with asyncio.timeout(idle_timeout):
                        client = await _reconnect(addr, connect_timeout, backoff or Backoff(), session)
                        await client.subscribe(topic, qos=1)
                except TimeoutError:
                    raise _unreachable(addr, f"not back within {idle_timeout:g} s") from None
                messages = aiter(client.messages)
                continue
            else:
                try:
                    got = decode_message(msg.topic.value, msg.payload)  # type: ignore[arg-type]
                except MalformedEvent as exc:
                    log.warning("skipping: %s", exc)
                    continue
                if msg.retain:
                    # A retained message is a run's Done: the answer to "how did run X end?"
                    if following is None or got.run_id != following or not isinstance(got.event, Done):
                        continue  # an earlier run's
                    if expected is None:  # it had ended before we came
                        yield got.event
                        return
                    # Resubscribing after a reconnect: it takes its place after the events still on their way.
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
    finally:
        await _disconnect(client, connect_timeout)
