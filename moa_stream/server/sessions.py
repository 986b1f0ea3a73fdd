"""Conversations a client keeps on the server between requests, named by the `X-Session-Id` header.

A client re-sends the whole conversation with every request. Without a session its prefix comes back from the
prefix cache; with one, the agents' sequences stay open and pinned between requests, so the next request
appends only its new turn. The session continues only when the request's history is exactly what the
client was sent (its earlier messages, then our answer as delivered); anything else starts it afresh.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from moa_stream import Conversation, MoA
from moa_stream.moa.context import as_messages

from .errors import APIError

SESSION_HEADER = "x-session-id"


@dataclass
class Session:
    """One kept conversation and the history a request must carry to continue it."""

    conv: Conversation
    moa: MoA
    expected: list[dict[str, str]] = field(default_factory=list)
    last_used: float = 0.0
    busy: bool = False


class Sessions:
    """A bounded LRU of sessions by (tenant, session id); idle ones past `ttl_s` are closed."""

    def __init__(self, max_sessions: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[tuple[str | None, str], Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def take(self, key: tuple[str | None, str], moa: MoA, mode: str, history: list[dict[str, str]],
                   cache_salt: str | None) -> Conversation:
        """The session's conversation if `history` continues it, else a new one in its place; marks it busy."""
        await self._expire()
        session = self._items.get(key)
        if session is not None and session.busy:
            raise APIError(409, f"session {key[1]!r} is answering another request; wait for it or use another id",
                           "invalid_request_error", param=SESSION_HEADER, code="session_busy")
        if session is None or session.moa is not moa or session.expected != history:
            if session is not None:
                await session.conv.close()
            session = Session(Conversation(moa, mode, history=as_messages(history), cache_salt=cache_salt), moa)
        self._items[key] = session
        self._items.move_to_end(key)
        session.busy, session.last_used = True, self._clock()
        while len(self._items) > self.max_sessions:
            _, oldest = self._items.popitem(last=False)
            await oldest.conv.close()
        return session.conv

    async def release(self, key: tuple[str | None, str], expected: list[dict[str, str]] | None) -> None:
        """The request is over: keep the sequences pinned for the next one (`expected` its history), or forget it."""
        session = self._items.get(key)
        if session is None:
            return
        session.busy, session.last_used = False, self._clock()
        session.expected = expected or []
        if expected is None:  # the turn failed or was cut: its agents restart from the history next time
            return
        await session.conv.pin(self.ttl_s)

    async def close(self) -> None:
        """Close every session (server shutdown)."""
        while self._items:
            await self._items.popitem()[1].conv.close()

    async def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._items.items() if not s.busy and now - s.last_used > self.ttl_s]:
            await self._items.pop(key).conv.close()
