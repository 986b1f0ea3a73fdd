"""Conversations a client keeps on the server between requests, named by the `X-Session-Id` header.

A client re-sends the whole conversation with every request. Without a session its prefix comes back from the
prefix cache; with one, the agents' sequences stay open and pinned between requests, so the next request
appends only its new turn. The session continues only when the request's history is exactly what the
client was sent (its earlier messages, then our answer as delivered); anything else starts it afresh.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from moa_stream import Conversation, Message, MoA

from .errors import APIError
from .jobs import Job

SESSION_HEADER = "x-session-id"


@dataclass
class Session:
    """One kept conversation and the history a request must carry to continue it."""

    conv: Conversation
    moa: MoA
    expected: list[Message] = field(default_factory=list)
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

    async def take(self, key: tuple[str | None, str], moa: MoA, mode: str, history: list[Message],
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
            session = Session(Conversation(moa, mode, history=history, cache_salt=cache_salt), moa)
        self._items[key] = session
        self._items.move_to_end(key)
        session.busy, session.last_used = True, self._clock()
        while len(self._items) > self.max_sessions:
            _, oldest = self._items.popitem(last=False)
            await oldest.conv.close()
        return session.conv

    async def release(self, key: tuple[str | None, str], expected: list[Message] | None) -> None:
        """The request is over: keep the sequences pinned for the next one (`expected` its history), or forget it."""
        session = self._items.get(key)
        if session is None:
            return
        session.busy, session.last_used = False, self._clock()
        session.expected = expected or []
        if expected is None:  # the turn failed or was cut: its agents restart from the history next time
            return
        await session.conv.pin(self.ttl_s)

    async def join(self, job: Job, session_id: str | None) -> Job:
        """The job on its session's kept conversation, if the request names one (`X-Session-Id`)."""
        if session_id is None:
            return job
        if not 0 < len(session_id) <= 256:
            raise APIError(400, f"the {SESSION_HEADER} header must be 1 to 256 characters", param=SESSION_HEADER)
        key = (job.cache_salt, session_id)  # a session id names a conversation within one tenant only
        conv = await self.take(key, job.moa, job.mode, job.history, job.cache_salt)
        return dataclasses.replace(job, conversation=conv, session=key)

    async def leave(self, job: Job, delivered: list[Message] | None) -> None:
        """The job is over: its session keeps what the client now holds (None: the turn did not complete)."""
        if job.session is not None:
            await self.release(job.session, delivered)

    async def close(self) -> None:
        """Close every session (server shutdown)."""
        while self._items:
            await self._items.popitem()[1].conv.close()

    async def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._items.items() if not s.busy and now - s.last_used > self.ttl_s]:
            await self._items.pop(key).conv.close()
