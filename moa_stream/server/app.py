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
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive, Scope, Send

from moa_stream import MODES, AgentError, AggregatorDelta, Done, MoA, Mode
from moa_stream.tools import call_format

from . import gate
from .admission import AdmissionWorker, Limiter, Tenancy, check_context_length, tenant_salt
from .errors import APIError, install_error_handlers
from .grammar_limits import GrammarLimits, check_schema
from .jobs import END, Failure, Job, produce, split_messages, wait_disconnect
from .request_checks import banned_tokens, check_text, refuse_unsupported
from .response_format import answer_structure, check_compiles, compile_too_slow
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
from .sessions import SESSION_HEADER, Sessions
from .settings import ServerSettings
from .stop_strings import StopCut
from .tool_calls import MessageToolCall, ToolRequest

MAX_SAMPLING_VARIANTS = 32  # pipelines kept per aggregator sampling (temperature, penalties); the oldest goes first
STREAM_BUFFER_EVENTS = 64  # events a stream holds for a slow client; past it the run waits for the client
BEARER = HTTPBearer(auto_error=False, description="the server's API key, when it has one")  # in the OpenAPI schema
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


def create_app(moa: MoA, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `moa` under OpenAI's chat completion API."""
    settings = settings or ServerSettings()
    app = FastAPI(title="moa-stream", description=__doc__.splitlines()[0], version="0.1.0")
    limiter = Limiter(settings.max_concurrency)
    worker = AdmissionWorker(limiter)
    tenancy = Tenancy(secrets.token_bytes(32))  # drawn per server: a keyless tenant's salt cannot be guessed
    limits = GrammarLimits(settings.max_schema_bytes, settings.max_schema_repeat)
    sessions = Sessions(settings.max_sessions, settings.session_ttl_s)
    variants: dict[tuple[tuple[str, float], ...], MoA] = {}  # bounded: clients choosing settings must not grow it
    buffers: set[asyncio.Queue[object]] = set()  # each live stream's queue, for the stats
    model_ids = [settings.model_id, *(f"{settings.model_id}:{m}" for m in MODES)]
    created = int(time.time())
    app.state.moa, app.state.settings, app.state.limiter, app.state.sessions = moa, settings, limiter, sessions
    install_error_handlers(app)
    gate.install(app, settings.api_key, settings.max_body_bytes)

    # A dependency's Depends default is how FastAPI wires it (ruff exempts it only on routes).
    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> str | None:  # noqa: B008
        """The caller's API key (None when keys are off); the gate has already refused a missing or wrong one.

        Declared as HTTP bearer security, so the OpenAPI schema says how to authenticate."""
        if settings.api_key is None or credentials is None:
            return None
        return credentials.credentials

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

    def moa_for(overrides: dict[str, object]) -> MoA:
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

    def make_job(req: ChatCompletionRequest, api_key: str | None, peer: str | None) -> Job:
        """The request as a Job, from checks that cost little; `admit` then does the costly ones."""
        if req.model not in model_ids:
            raise APIError(404, f"model {req.model!r} does not exist; use one of {model_ids}", param="model",
                           code="model_not_found")
        refuse_unsupported(req)
        check_text(req)
        agg_engine = moa.engines[moa.config.aggregator.backend]
        overrides: dict[str, object] = dict(req.aggregator_overrides())
        if banned := banned_tokens(req.logit_bias, agg_engine.vocab_size):
            overrides["banned_token_ids"] = banned
        _, _, suffix = req.model.partition(":")
        mode: Mode = suffix or moa.config.mode  # type: ignore[assignment]
        tools = ToolRequest.of(req.tools, req.tool_choice, req.parallel_tool_calls, call_format(settings.call_format))
        if tools is not None and req.response_format is not None and req.response_format.type != "text":
            raise APIError(400, "response_format and tools cannot be combined: the answer is either calls or JSON",
                           param="response_format")
        for i, spec in enumerate((req.tools or []) if tools else []):
            check_schema(spec.function.parameters or {}, f"tools[{i}].function.parameters", "tools", limits)
        structured = tools.structured() if tools else answer_structure(req.response_format, limits)
        question, history = split_messages(req.messages, tools)
        requested = req.max_completion_tokens or req.max_tokens or moa.config.aggregator.max_tokens
        answer_limit = min(requested, settings.max_tokens or requested)  # serve --max-tokens caps every answer
        return Job(moa_for(overrides), req.model, mode, question, history, answer_limit, answer_limit,
                   tenant_salt(api_key, req.cache_salt, tenancy.peer_salt(peer)), structured, tools,
                   stops=req.stop_strings())

    async def admit(job: Job) -> None:
        """Compile the answer's grammar (time-limited) and count the prompt's tokens, on worker threads."""
        if job.structured is not None:
            param = "tools" if job.tools else "response_format"
            await worker.run(lambda: check_compiles(moa, job.structured, param), settings.compile_timeout_s,
                             lambda: compile_too_slow(param, settings.compile_timeout_s))
        await worker.run(lambda: check_context_length(moa, job.question, job.history, job.answer_limit))

    async def join_session(job: Job, session_id: str | None) -> Job:
        if session_id is None:
            return job
        if not 0 < len(session_id) <= 256:
            raise APIError(400, f"the {SESSION_HEADER} header must be 1 to 256 characters", param=SESSION_HEADER)
        key = (job.cache_salt, session_id)  # a session id names a conversation within one tenant only
        conv = await sessions.take(key, job.moa, job.mode, job.history, job.cache_salt)
        return dataclasses.replace(job, conversation=conv, session=key)

    async def leave_session(job: Job, delivered: list[dict[str, str]] | None) -> None:
        if job.session is not None:
            await sessions.release(job.session, delivered)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request,
                               api_key: str | None = Depends(authorize)) -> JSONResponse | StreamingResponse:
        limiter.acquire()  # first: a refused request costs nothing, and admission's threads are bounded
        try:
            job = make_job(req, api_key, request.client.host if request.client else None)
            await admit(job)
            job = await join_session(job, request.headers.get(SESSION_HEADER))
        except BaseException:
            limiter.release()
            raise
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return ReleasingStreamingResponse(stream(job, include_usage), limiter.release,
                                              settings.request_timeout_s + SEND_GRACE_S)
        try:
            return await complete(job, request.receive)
        finally:
            limiter.release()

    async def complete(job: Job, receive: Receive) -> JSONResponse:
        delivered = None
        try:
            response, delivered = await answer(job, receive)
            return response
        finally:
            await leave_session(job, delivered)

    async def answer(job: Job, receive: Receive) -> tuple[JSONResponse, list[dict[str, str]] | None]:
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

    async def stream(job: Job, include_usage: bool) -> AsyncIterator[str]:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=STREAM_BUFFER_EVENTS)
        buffers.add(queue)
        producer = asyncio.create_task(produce(job, settings.request_timeout_s, queue.put))
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
                await leave_session(job, delivered)
            buffers.discard(queue)

    return app
