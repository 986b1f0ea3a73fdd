"""A MoA turn's events on an MQTT broker (aiomqtt): publish them, or subscribe to a run from another host.

Topics are `<prefix>/<run_id>/<kind>` (e.g. `moa/3f2a.../aggregator_delta`); the `Done` event is retained on
`<prefix>/<run_id>/done`, so a watcher that arrives late still learns how the run ended. Payloads are JSON:
`{"v": 1, "kind": ..., "run_id": ..., "seq": n, "event": {...}}`. MQTT keeps order only within one topic and
our events span several, so each carries its run's sequence number and the subscriber restores run order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, TextIO
from urllib.parse import unquote, urlsplit

import aiomqtt
from pydantic import TypeAdapter, ValidationError

from .events import AgentError, AggregatorDelta, ChunkIngested, Done, Event, FirstToken, ProposerDelta

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
DEFAULT_PREFIX: Final = "moa"
ANY_RUN: Final = "+"

EVENT_KINDS: Final[dict[str, type[Any]]] = {
    "proposer_delta": ProposerDelta,
    "chunk_ingested": ChunkIngested,
    "aggregator_delta": AggregatorDelta,
    "first_token": FirstToken,
    "agent_error": AgentError,
    "done": Done,
}
_KIND_OF: Final = {cls: kind for kind, cls in EVENT_KINDS.items()}
# pydantic validates stdlib dataclasses field by field, Done's nested Metrics model included.
_ADAPTERS: Final = {kind: TypeAdapter(cls) for kind, cls in EVENT_KINDS.items()}


class MqttBusError(Exception):
    """Something went wrong between us and the MQTT broker (base of this module's errors)."""


class BadMqttUrl(MqttBusError, ValueError):
    """The broker URL, topic prefix or run id cannot be used."""


class BrokerUnreachable(MqttBusError):
    """The broker did not accept a connection, or the connection dropped."""


class MalformedEvent(MqttBusError, ValueError):
    """A message on an event topic is not a moa-stream event."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker listens, parsed from `mqtt://[user[:password]@]host[:port]` (mqtts:// for TLS)."""

    url: str
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class BusMessage:
    """One decoded message: which run, its place in the run, and the event."""

    run_id: str
    seq: int
    event: Event

    @property
    def kind(self) -> str:
        """The event's topic level, e.g. `aggregator_delta`."""
        return event_kind(self.event)


def parse_url(url: str) -> BrokerAddress:
    """Parse a broker URL; raises BadMqttUrl saying what a good one looks like."""
    hint = "use mqtt://HOST[:PORT] (default port 1883) or mqtts://HOST[:PORT] (TLS, 8883)"
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BadMqttUrl(f"broker URL {url!r} has scheme {parts.scheme or 'none'!r}; {hint}")
    try:
        port = parts.port
    except ValueError:
        raise BadMqttUrl(f"broker URL {url!r} has a bad port; {hint}") from None
    if not parts.hostname:
        raise BadMqttUrl(f"broker URL {url!r} names no host; {hint}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadMqttUrl(f"broker URL {url!r} has a path or query; set the topic prefix separately; {hint}")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(url=url, host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                         username=unquote(parts.username) if parts.username else None,
                         password=unquote(parts.password) if parts.password else None)


def check_prefix(prefix: str) -> str:
    """A topic prefix: one or more non-empty levels without MQTT wildcards; raises BadMqttUrl otherwise."""
    levels = prefix.split("/")
    if not prefix or any(not lv or "+" in lv or "#" in lv for lv in levels) or prefix.startswith("$"):
        raise BadMqttUrl(f"topic prefix {prefix!r} is not usable: give levels like 'moa' or 'lab/moa', "
                         "no empty levels, no '+' or '#', not starting with '$'")
    return prefix


def _check_run_id(run_id: str, *, wildcard_ok: bool) -> str:
    if run_id == ANY_RUN and wildcard_ok:
        return run_id
    if not run_id or any(c in run_id for c in "/+#") or "\0" in run_id:
        raise BadMqttUrl(f"run id {run_id!r} is not usable: one topic level, no '/', '+' or '#'"
                         + (" (or '+' for the next run)" if wildcard_ok else ""))
    return run_id


def event_kind(ev: Event) -> str:
    """The topic level of an event type, e.g. `first_token`."""
    try:
        return _KIND_OF[type(ev)]
    except KeyError:
        raise TypeError(f"{type(ev).__name__} is not a moa-stream event") from None


def event_topic(prefix: str, run_id: str, ev: Event) -> str:
    """`<prefix>/<run_id>/<kind>` for an event."""
    return f"{prefix}/{run_id}/{event_kind(ev)}"


def encode_event(ev: Event, *, run_id: str = "", seq: int = 0) -> bytes:
    """The JSON payload of an event (UTF-8)."""
    kind = event_kind(ev)
    body = _ADAPTERS[kind].dump_python(ev, mode="json")
    return json.dumps({"v": PROTOCOL_VERSION, "kind": kind, "run_id": run_id, "seq": seq, "event": body},
                      ensure_ascii=False, separators=(",", ":")).encode()


def decode_message(topic: str, payload: bytes | bytearray | str) -> BusMessage:
    """Decode a payload received on `topic`; raises MalformedEvent naming what is wrong."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"message on {topic!r} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent(f"message on {topic!r} is a JSON {type(doc).__name__}, not an object")
    if doc.get("v") != PROTOCOL_VERSION:
        raise MalformedEvent(f"message on {topic!r} has protocol version {doc.get('v')!r}, this reader speaks "
                             f"{PROTOCOL_VERSION}; upgrade moa-stream on both ends")
    kind, seq, run_id = doc.get("kind"), doc.get("seq"), doc.get("run_id")
    if kind not in EVENT_KINDS:
        raise MalformedEvent(f"message on {topic!r} has unknown kind {kind!r}; expected one of "
                             f"{', '.join(EVENT_KINDS)}")
    if topic.rsplit("/", 1)[-1] != kind:
        raise MalformedEvent(f"message on {topic!r} says it is a {kind!r} event; the topic disagrees")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(run_id, str):
        raise MalformedEvent(f"message on {topic!r} has a bad seq {seq!r} or run_id {run_id!r}")
    try:
        event = _ADAPTERS[kind].validate_python(doc.get("event"))
    except ValidationError as exc:
        raise MalformedEvent(f"message on {topic!r} is not a valid {kind} event: {exc}") from None
    return BusMessage(run_id=run_id, seq=seq, event=event)


def decode_event(topic: str, payload: bytes | bytearray | str) -> Event:
    """The event in a payload received on `topic`; raises MalformedEvent."""
    return decode_message(topic, payload).event


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
        self.run_id = _check_run_id(run_id, wildcard_ok=False) if run_id is not None else uuid.uuid4().hex[:12]
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


def add_publish_arguments(p: argparse.ArgumentParser) -> None:
    """--mqtt URL and --mqtt-prefix, for commands that can publish their run."""
    p.add_argument("--mqtt", metavar="URL", default=None,
                   help="also publish the run's events on this MQTT broker (mqtt://HOST[:PORT]); "
                        "watch them with `moa-stream watch URL`")
    p.add_argument("--mqtt-prefix", metavar="PREFIX", default=DEFAULT_PREFIX,
                   help=f"topic prefix: events go to PREFIX/RUN_ID/KIND (default: {DEFAULT_PREFIX})")


def check_publish_arguments(args: argparse.Namespace) -> None:
    """Validate --mqtt and --mqtt-prefix without connecting; raises BadMqttUrl."""
    if args.mqtt is not None:
        parse_url(args.mqtt)
        check_prefix(args.mqtt_prefix)


@contextlib.asynccontextmanager
async def published(events: AsyncIterator[Event], args: argparse.Namespace,
                    note: TextIO) -> AsyncIterator[AsyncIterator[Event]]:
    """`events` unchanged, or with --mqtt also published (the run id and topics are written to `note`)."""
    if args.mqtt is None:
        yield events
        return
    async with EventPublisher(args.mqtt, prefix=args.mqtt_prefix) as pub:
        note.write(f"[mqtt: run {pub.run_id} on {pub.address.url}, topics {pub.topic_filter}]\n")
        note.flush()
        yield publish_stream(events, pub)


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
    _check_run_id(run_id, wildcard_ok=True)
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
