"""How an admitted Job is answered: one JSON completion, or server-sent chunks as the answer streams.

A client that disconnects, mid-stream or while waiting for a whole answer, cancels its agents, which frees their
sequences.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from moa_stream import AgentError, AggregatorDelta, Done, Message

from ..errors import APIError
from ..jobs import END, Failure, Job, produce, wait_disconnect
from ..schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    MoAInfo,
    Usage,
    sse,
)
from ..state import STREAM_BUFFER_EVENTS, AppState
from ..stop_strings import StopCut
from ..tool_calls import MessageToolCall

SEND_GRACE_S = 10.0  # a response still sending this long past the request timeout is cut (a client not reading)


class ReleasingStreamingResponse(StreamingResponse):
    """A streaming response that gives its concurrency slot back however the stream ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], limit_s: float) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._release = release
        self._limit_s = limit_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self._limit_s):  # a client that stops reading cannot hold the slot forever
                await super().__call__(scope, receive, send)
        finally:
            self._release()


async def complete(state: AppState, job: Job, receive: Receive) -> JSONResponse:
    """The whole answer as one ChatCompletion (or the error); the session keeps what was delivered."""
    delivered = None
    try:
        response, delivered = await _answer(state, job, receive)
        return response
    finally:
        await state.sessions.leave(job, delivered)


async def _answer(state: AppState, job: Job, receive: Receive) -> tuple[JSONResponse, list[Message] | None]:
    items: list[object] = []

    async def keep(item: object) -> None:
        items.append(item)

    producer = asyncio.create_task(produce(job, state.settings.request_timeout_s, keep))
    watcher = asyncio.create_task(wait_disconnect(receive))
    try:
        await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (producer, watcher):  # a gone client cancels its agents; their sequences are freed
            task.cancel()
        await asyncio.gather(producer, watcher, return_exceptions=True)
    failure = next((i for i in items if isinstance(i, Failure)), None)
    if failure is not None:
        raise failure.error.with_agent_errors([i for i in items if isinstance(i, AgentError)])
    done = next((i for i in items if isinstance(i, Done)), None)
    if done is None:  # the client left; nobody reads this
        return APIError(499, "client closed the request").response(), None
    errors = [i for i in items if isinstance(i, AgentError)]
    cut = StopCut(job.stops)
    text = cut.cut(done.answer)
    content, calls = job.tools.calls_of(text) if job.tools else (text, [])
    answer = ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=job.model,
        choices=[Choice(message=AssistantMessage(content=content, tool_calls=calls or None),
                        finish_reason=job.finish_reason(done.metrics, bool(calls), cut.hit))],
        usage=Usage.of(done.metrics), moa=MoAInfo.of(done.metrics, errors))
    return JSONResponse(answer.model_dump(mode="json")), job.delivered(content or "", calls)


async def stream(state: AppState, job: Job, include_usage: bool) -> AsyncIterator[str]:
    """The answer as server-sent chunks, OpenAI's layout; bounded buffering paces the run by the client."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=STREAM_BUFFER_EVENTS)
    state.buffers.add(queue)
    producer = asyncio.create_task(produce(job, state.settings.request_timeout_s, queue.put))
    cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> ChatCompletionChunk:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
        return ChatCompletionChunk(id=cid, created=now, model=job.model, choices=choices, **extra)

    errors: list[AgentError] = []
    calls = job.tools.deltas() if job.tools else None  # content and tool-call deltas of the answer
    cut = StopCut(job.stops)
    sent: list[dict[str, Any]] = []  # what the client got, for its session
    delivered = None
    try:
        yield sse(chunk({"role": "assistant", "content": ""}))
        while (item := await queue.get()) is not END:
            if isinstance(item, AggregatorDelta) and (text := cut.feed(item.text)):
                for delta in calls.feed(text) if calls else [{"content": text}]:
                    sent.append(delta)
                    yield sse(chunk(delta))
            elif isinstance(item, AgentError):
                errors.append(item)
            elif isinstance(item, Failure):
                yield sse(item.error.with_agent_errors(errors).body())
            elif isinstance(item, Done):
                tail = cut.flush()
                tail_deltas = (calls.feed(tail) if calls else [{"content": tail}]) if tail else []
                for delta in [*tail_deltas, *(calls.finish() if calls else [])]:
                    sent.append(delta)
                    yield sse(chunk(delta))
                delivered = job.delivered("".join(d.get("content", "") for d in sent),
                                          [MessageToolCall.model_validate(c) for d in sent
                                           for c in d.get("tool_calls", ())])
                usage, info = Usage.of(item.metrics), MoAInfo.of(item.metrics, errors)
                finish = job.finish_reason(item.metrics, bool(calls and calls.calls), cut.hit)
                if include_usage:  # OpenAI's layout: usage in a last chunk with no choices
                    yield sse(chunk({}, finish))
                    yield sse(chunk(None, usage=usage, moa=info))
                else:
                    yield sse(chunk({}, finish, usage=usage, moa=info))
        yield sse("[DONE]")
    finally:  # also on disconnect: Starlette cancels this generator, we cancel the agents
        producer.cancel()
        # Starlette's (anyio) cancel scope re-cancels every await here; a second cancel would cut the
        # agents' cleanup short and leak their sequences, so wait for it shielded.
        with anyio.CancelScope(shield=True):
            await asyncio.gather(producer, return_exceptions=True)
            await state.sessions.leave(job, delivered)
        state.buffers.discard(queue)
