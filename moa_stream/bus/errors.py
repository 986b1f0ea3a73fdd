"""What can go wrong between a run and the MQTT broker; every error is a `MoAStreamError`."""

from __future__ import annotations

from ..errors import MoAStreamError


class MqttBusError(MoAStreamError):
    """Something went wrong between us and the MQTT broker (base of the bus's errors)."""


class BadMqttUrl(MqttBusError, ValueError):
    """The broker URL, topic prefix or run id cannot be used: fix it as the message says (a usage error)."""


class BrokerUnreachable(MqttBusError):
    """The broker did not accept a connection, or the connection dropped: start the broker or check the URL."""


class MalformedEvent(MqttBusError, ValueError):
    """A message on an event topic is not a moa-stream event (another client, or another protocol version)."""
