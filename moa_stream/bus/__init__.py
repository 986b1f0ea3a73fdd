"""A MoA turn's events on an MQTT broker: the wire format (codec) and the aiomqtt transport.

```python
async with EventPublisher("mqtt://broker:1883") as pub:
    async for ev in publish_stream(moa.stream("Why is the sky blue?"), pub): ...
async for ev in subscribe("mqtt://broker:1883", run_id): ...   # elsewhere: typed events, in order, until Done
```
"""

from .address import ANY_RUN, DEFAULT_PREFIX, BrokerAddress, check_prefix, check_run_id, parse_url
from .codec import (
    EVENT_KINDS,
    PROTOCOL_VERSION,
    BusMessage,
    decode_event,
    decode_message,
    encode_event,
    event_kind,
    event_topic,
)
from .errors import BadMqttUrl, BrokerUnreachable, MalformedEvent, MqttBusError
from .transport import EventPublisher, publish_stream, subscribe

__all__ = [
    "ANY_RUN",
    "DEFAULT_PREFIX",
    "EVENT_KINDS",
    "PROTOCOL_VERSION",
    "BadMqttUrl",
    "BrokerAddress",
    "BrokerUnreachable",
    "BusMessage",
    "EventPublisher",
    "MalformedEvent",
    "MqttBusError",
    "check_prefix",
    "check_run_id",
    "decode_event",
    "decode_message",
    "encode_event",
    "event_kind",
    "event_topic",
    "parse_url",
    "publish_stream",
    "subscribe",
]
