"""The FastAPI app where the MoA pipeline is a model: `/v1/models`, `/v1/chat/completions`, health and stats.

Streaming answers are server-sent events; a client that disconnects, mid-stream or while waiting for a whole
answer, cancels its agents, which frees their sequences. Past `max_concurrency` requests get 429 at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from moa_stream import MODES, AgentError, AggregatorDelta, Done, IncrementalLayout, MoA, Mode
from moa_stream.layouts import layout_class

from .admission import check_context_length, tenant_salt
from .errors import APIError, install_error_handlers
from .jobs import END, Failure, Job, produce, split_messages, wait_disconnect
from .response_format import answer_structure
from .schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    MoAInfo,
    Usage,
    sse,
)
from .settings import ServerSettings

MAX_SAMPLING_VARIANTS = 32  # pipelines kept per aggregator sampling (temperature, penalties); the oldest goes first
STREAM_BUFFER_EVENTS = 64  # events a stream holds for a slow client; past it the run waits for the client
SEND_GRACE_S = 10.0  # a response still sending this long past the request timeout is cut (a client not reading)


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


def create_app(moa: MoA, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `moa` under OpenAI's chat completion API."""
    settings = settings or ServerSettings()
    app = FastAPI(title="moa-stream", description=__doc__.splitlines()[0], version="0.1.0")
    limiter = Limiter(settings.max_concurrency)
    variants: dict[tuple[tuple[str, float], ...], MoA] = {}  # bounded: clients choosing settings must not grow it
    buffers: set[asyncio.Queue[object]] = set()  # each live stream's queue, for the stats
    model_ids = [settings.model_id, *(f"{settings.model_id}:{m}" for m in MODES)]
    created = int(time.time())
    app.state.moa, app.state.settings, app.state.limiter = moa, settings, limiter
    install_error_handlers(app)

    async def authorize(request: Request) -> str | None:
        """The caller's API key (None when keys are off); a 401 APIError when it is missing or wrong."""
        if settings.api_key is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), settings.api_key):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")
        return token.strip()

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "moa-stream"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m) for m in model_ids]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in model_ids:
            raise APIError(404, f"model {model_id!r} does not exist; use one of {model_ids}", param="model",
                           code="model_not_found")
        return model_card(model_id)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": limiter.in_flight}

    @app.get("/v1/moa/stats", dependencies=[Depends(authorize)])
    async def stats() -> dict[str, Any]:
        engines = {name: dataclasses.asdict(s) for name, s in moa.engine_stats().items()}
        buffered = {"events": sum(q.qsize() for q in buffers), "per_stream_limit": STREAM_BUFFER_EVENTS}
        return {"in_flight": limiter.in_flight, "max_concurrency": limiter.limit, "stream_buffer": buffered,
                "engines": engines}

    def moa_for(overrides: dict[str, float]) -> MoA:
        agg = moa.config.aggregator
        changed = tuple(sorted((k, v) for k, v in overrides.items() if getattr(agg, k) != v))
        if not changed:
            return moa
        if changed not in variants:  # same engines, only the aggregator's sampling differs
            if len(variants) >= MAX_SAMPLING_VARIANTS:
                del variants[next(iter(variants))]
            variants[changed] = MoA(moa.config.model_copy(update={"aggregator": agg.model_copy(update=overrides)}),
                                    moa.engines)
        return variants[changed]

    def make_job(req: ChatCompletionRequest, api_key: str | None) -> Job:
        if req.model not in model_ids:
            raise APIError(404, f"model {req.model!r} does not exist; use one of {model_ids}", param="model",
                           code="model_not_found")
        if req.n not in (None, 1):
            raise APIError(400, f"n={req.n} is not supported: the pipeline writes one answer per request",
                           param="n")
        _, _, suffix = req.model.partition(":")
        mode: Mode = suffix or moa.config.mode  # type: ignore[assignment]
        structured = answer_structure(moa, req.response_format)
        if structured is not None and issubclass(layout_class(mode), IncrementalLayout):
            # An incremental layout writes the answer in several generations with intakes between them, and
            # each generation starts its grammar afresh: a structured answer is written in one generation
            # (classic: the response's `moa.mode` says so) until the turn carries one grammar across steps.
            mode = "classic"
        question, history = split_messages(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens
        answer_limit = max_tokens or moa.config.aggregator.max_tokens
        check_context_length(moa, question, history, answer_limit)
        return Job(moa_for(req.aggregator_overrides()), req.model, mode, question, history, max_tokens, answer_limit,
                   tenant_salt(api_key, req.cache_salt), structured)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request,
                               api_key: str | None = Depends(authorize)) -> JSONResponse | StreamingResponse:
        job = make_job(req, api_key)
        limiter.acquire()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return ReleasingStreamingResponse(stream(job, include_usage), limiter.release,
                                              settings.request_timeout_s + SEND_GRACE_S)
        try:
            return await complete(job, request.receive)
        finally:
            limiter.release()

    async def complete(job: Job, receive: Receive) -> JSONResponse:
        items: list[object] = []

        async def keep(item: object) -> None:
            items.append(item)

        producer = asyncio.create_task(produce(job, settings.request_timeout_s, keep))
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
            return APIError(499, "client closed the request").response()
        errors = [i for i in items if isinstance(i, AgentError)]
        answer = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=job.model,
            choices=[Choice(message=AssistantMessage(content=done.answer),
                            finish_reason=job.finish_reason(done.metrics))],
            usage=Usage.of(done.metrics), moa=MoAInfo.of(done.metrics, errors))
        return JSONResponse(answer.model_dump(mode="json"))

    async def stream(job: Job, include_usage: bool) -> AsyncIterator[str]:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=STREAM_BUFFER_EVENTS)
        buffers.add(queue)
        producer = asyncio.create_task(produce(job, settings.request_timeout_s, queue.put))
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, str] | None, finish: str | None = None, **extra: Any) -> ChatCompletionChunk:
            choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
            return ChatCompletionChunk(id=cid, created=now, model=job.model, choices=choices, **extra)

        errors: list[AgentError] = []
        try:
            yield sse(chunk({"role": "assistant", "content": ""}))
            while (item := await queue.get()) is not END:
                if isinstance(item, AggregatorDelta) and item.text:
                    yield sse(chunk({"content": item.text}))
                elif isinstance(item, AgentError):
                    errors.append(item)
                elif isinstance(item, Failure):
                    yield sse(item.error.with_agent_errors(errors).body())
                elif isinstance(item, Done):
                    usage, info = Usage.of(item.metrics), MoAInfo.of(item.metrics, errors)
                    finish = job.finish_reason(item.metrics)
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
            buffers.discard(queue)

    return app
