"""Where the broker listens and which topics a run uses: URL, topic prefix and run id, checked before connecting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from .errors import BadMqttUrl

DEFAULT_PREFIX: Final = "moa"
ANY_RUN: Final = "+"


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker listens, parsed from `mqtt://[user[:password]@]host[:port]` (mqtts:// for TLS)."""

    url: str
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None


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


def check_run_id(run_id: str, *, wildcard_ok: bool) -> str:
    """A run id: one topic level (or ANY_RUN where `wildcard_ok`); raises BadMqttUrl otherwise."""
    if run_id == ANY_RUN and wildcard_ok:
        return run_id
    if not run_id or any(c in run_id for c in "/+#") or "\0" in run_id:
        raise BadMqttUrl(f"run id {run_id!r} is not usable: one topic level, no '/', '+' or '#'"
                         + (" (or '+' for the next run)" if wildcard_ok else ""))
    return run_id
