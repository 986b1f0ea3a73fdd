"""What a request must pass before any agent runs: a free slot, a prompt that fits the context, a tenant's salt.

The order is what keeps one request from starving the others: a slot is taken first (429 at once, nothing
read or computed), then tokenising and grammar compiling run on worker threads, so the event loop goes on
answering `/health` and streaming other answers however long they take.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from moa_stream import Message, MoA

from .errors import APIError

T = TypeVar("T")


class Limiter:
    """Counts requests in flight; past the limit a request is refused at once (no queueing)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def acquire(self) -> None:
        """Take a slot, or raise the 429 APIError."""
        if self.in_flight >= self.limit:
            raise APIError(429, f"too many requests in flight (limit {self.limit}); retry shortly",
                           "rate_limit_error", code="concurrency_limit", headers={"Retry-After": "1"})
        self.in_flight += 1

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1

    def hold_until(self, work: asyncio.Future[object]) -> None:
        """Count `work` as in flight until it ends: a thread given up on still uses a core until it returns."""
        self.in_flight += 1
        work.add_done_callback(lambda _: self.release())


class AdmissionWorker:
    """Runs admission's CPU work (tokenising, compiling grammars) on threads, off the event loop.

    Its threads are as many as the server's slots: every job holds a slot (or, once given up on, a slot of its
    own via `Limiter.hold_until`), so a job never waits for a thread. Idle threads end with the app (the pool
    wakes them when it is collected).
    """

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self._pool = ThreadPoolExecutor(limiter.limit, thread_name_prefix="moa-admission")

    async def run(self, fn: Callable[[], T], limit_s: float | None = None,
                  too_slow: Callable[[], APIError] | None = None) -> T:
        """`fn()` on a worker thread; past `limit_s` the `too_slow()` error is raised and the thread keeps a slot."""
        work = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        try:
            return await asyncio.wait_for(asyncio.shield(work), limit_s)
        except TimeoutError:
            self._limiter.hold_until(work)
            raise (too_slow() if too_slow else APIError(400, "the request took too long to check")) from None
        except asyncio.CancelledError:
            if not work.done():
                self._limiter.hold_until(work)
            raise


PROBE_CHARS_PER_TOKEN = 8  # about twice what a tokenizer packs into a token of text; more text gets a probe first
PROBE_MARGIN_TOKENS = 16  # a cut can split a word: the probe's count may exceed the prefix's share by a few


def check_surely_too_long(moa: MoA, question: str, history: list[Message]) -> None:
    """Raise the 400 `context_length_exceeded` at once when a prefix of the messages' text is already too long.

    A 4 MB prompt took 87 s to tokenise for the four agents on a loaded 2-core machine, holding a slot all along;
    its first `limit x 8` characters tell in a fraction of a second. Shorter text goes to the exact count.
    """
    text = "\n".join([*(m.content for m in history), question])
    engines = {id(e): e for e in (moa.engines[a.backend] for a in moa.config.agents())}.values()
    for engine in engines:
        limit = engine.max_model_len
        probe = limit * PROBE_CHARS_PER_TOKEN
        if len(text) <= probe:
            continue
        counted = len(engine.tokenizer.encode(text[:probe], add_special_tokens=False))
        if counted > limit + PROBE_MARGIN_TOKENS:
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, the first {probe} of the "
                f"messages' {len(text)} characters are already {counted} tokens. Please reduce the length of the "
                "messages.", param="messages", code="context_length_exceeded")


def check_context_length(moa: MoA, question: str, history: list[Message], answer_tokens: int) -> None:
    """Raise OpenAI's 400 `context_length_exceeded` when an agent's prompt (plus the answer) cannot fit its engine.

    Every agent must be able to read its prompt and write a token; the aggregator must also fit the whole
    answer, as OpenAI counts messages plus max_tokens. Blocking (it tokenises): run it on a worker thread.
    """
    check_surely_too_long(moa, question, history)
    prompts = moa.prompt_tokens(question, history)
    aggregator = moa.config.aggregator.name
    for agent in moa.config.agents():
        limit = moa.engines[agent.backend].max_model_len
        prompt = prompts[agent.name]
        completion = answer_tokens if agent.name == aggregator else 1
        if prompt + completion > limit:
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion) for "
                f"agent {agent.name!r}. Please reduce the length of the messages or completion.",
                param="messages", code="context_length_exceeded")


def tenant_salt(api_key: str | None, request_salt: str | None, peer_salt: str | None = None) -> str | None:
    """The request's prefix-cache salt: who the tenant is, never sent to the engine as itself.

    With keys on: the key's digest, combined with the request's `cache_salt`. Without: the request's
    `cache_salt` when it sends one (clients sending the same one share a cache on purpose), else `peer_salt`,
    the salt of the client's address (`Tenancy.peer_salt`). The key and the address never reach the engine.
    """
    if api_key is None:
        if request_salt is None:
            return peer_salt
        return hashlib.sha256(b"moa-stream shared salt\0" + request_salt.encode()).hexdigest()
    digest = hashlib.sha256(b"moa-stream tenant\0" + api_key.encode())
    if request_salt is not None:
        digest.update(b"\0salt\0" + request_salt.encode())
    return digest.hexdigest()


class Tenancy:
    """Who a client without an API key is: its address, keyed by a secret this server drew at start.

    The address (not the connection) is the unit: a client's conversation spans connections (pools, reconnects,
    sessions), and an address is what a keyless server can tell apart. The secret makes the salt unguessable,
    so a client cannot reproduce another address's salt by sending it as `cache_salt`.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def peer_salt(self, host: str | None) -> str:
        """The salt of the client at `host` (one salt for clients whose address is unknown)."""
        return hmac.new(self._secret, b"peer\0" + (host or "").encode(), hashlib.sha256).hexdigest()
