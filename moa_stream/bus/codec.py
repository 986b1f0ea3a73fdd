"""The wire format: an event's topic and its JSON payload, and back, validated field by field.

Topics are `<prefix>/<run_id>/<kind>` (e.g. `moa/3f2a.../aggregator_delta`). Payloads are JSON:
`{"v": 1, "kind": ..., "run_id": ..., "seq": n, "event": {...}}`. MQTT keeps order only within one topic and
our events span several, so each carries its run's sequence number and the subscriber restores run order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from ..events import AgentError, AggregatorDelta, ChunkIngested, Done, Event, FirstToken, ProposerDelta
from .errors import MalformedEvent

PROTOCOL_VERSION: Final = 1

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
