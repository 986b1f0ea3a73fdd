"""`--mqtt URL` and `--mqtt-prefix` for commands that can also publish their run's events on a broker."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import TextIO

from moa_stream import Event
from moa_stream.bus import DEFAULT_PREFIX, EventPublisher, check_prefix, parse_url, publish_stream


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
