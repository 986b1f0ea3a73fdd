"""An OpenAI-compatible HTTP server where the MoA pipeline is a model: `/v1/models`, `/v1/chat/completions`.

Every answer carries standard `usage` and an extra top-level `moa` field (TTFT, total time, chunks ingested,
prefill computed/reused/saved, mode, per-agent metrics). Streaming answers are server-sent events; a client
that disconnects mid-stream cancels its agents, which frees their sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from engine import CapacityError, EngineError, InvalidTokensError

from .errors import MoAError
from .api import MoA
from .events import MODES, AgentError, AggregatorDelta, Done, Metrics, Mode


class ServerSettings(BaseModel):
    """How the server listens and what it allows."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="interface to bind; loopback by default")
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="when set, requests need 'Authorization: Bearer <key>'")
    request_timeout_s: float = Field(300.0, gt=0, description="a request running longer is stopped")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once; more get HTTP 429")
    model_id: str = Field("moa-stream", min_length=1, description="model id; '<id>:<mode>' picks a mode")


# ---------------------------------------------------------------------------------------------- request models


class TextPart(BaseModel):
    """One part of a multi-part message content (only text is accepted)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One OpenAI chat message."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The parts of an OpenAI chat completion request the pipeline uses; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    n: int | None = None
    stream_options: StreamOptions | None = None


class APIError(Exception):
    """An error answered as OpenAI's JSON error body with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------- helpers


class _Limiter:
    """Counts requests in flight; past the limit a request is refused at once (no queueing)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def acquire(self) -> None:
        if self.in_flight >= self.limit:
            raise APIError(429, f"too many requests in flight (limit {self.limit}); retry shortly",
                           "rate_limit_error", code="concurrency_limit", headers={"Retry-After": "1"})
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1


class _ReleasingStreamingResponse(StreamingResponse):
    """A streaming response that gives its concurrency slot back however the stream ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@dataclasses.dataclass(frozen=True)
class _Job:
    """One validated request, ready to run."""

    moa: MoA
    model: str
    mode: Mode
    question: str
    history: list[dict[str, str]]
    max_tokens: int | None
    answer_limit: int


@dataclasses.dataclass(frozen=True)
class _Failure:
    error: APIError


_END = object()


def _content(msg: ChatMessage, index: int) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                           param=f"messages[{index}].content")
        texts.append(part.text)
    return "".join(texts)


def _split_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The question (last user message) and the history before it."""
    history: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if msg.role in ("tool", "function"):
            raise APIError(400, f"messages[{i}].role {msg.role!r} is not supported: the MoA pipeline has no tools",
                           param=f"messages[{i}].role")
        role = "system" if msg.role == "developer" else msg.role
        history.append({"role": role, "content": _content(msg, i)})
    last = history.pop()
    if last["role"] != "user":
        raise APIError(400, "the last message must come from the user (role 'user')", param="messages")
    if not last["content"].strip():
        raise APIError(400, "the last user message is empty; send some text", param="messages")
    return last["content"], history


def _usage(metrics: Metrics) -> dict[str, int]:
    # prompt_tokens: what every agent read as its prompt; completion_tokens: the answer the client gets.
    prompt = sum(a.prompt_tokens for a in metrics.agents.values())
    return {"prompt_tokens": prompt, "completion_tokens": metrics.answer_tokens,
            "total_tokens": prompt + metrics.answer_tokens}


def moa_field(metrics: Metrics, errors: list[AgentError]) -> dict[str, Any]:
    """The extra `moa` object: timings, KV reuse and per-agent metrics."""
    return {
        "mode": metrics.mode,
        "ttft_s": metrics.ttft_s,
        "total_s": metrics.total_s,
        "tokens_per_s": metrics.tokens_per_s,
        "answer_tokens": metrics.answer_tokens,
        "chunks_ingested": metrics.chunks_ingested,
        "prefill_computed": metrics.prefill_computed,
        "prefill_reused": metrics.prefill_reused,
        "prefill_saved": metrics.prefill_saved,
        "aggregator_prefill_computed": metrics.aggregator_prefill_computed,
        "aggregator_prefill_reused": metrics.aggregator_prefill_reused,
        "decode_tokens": metrics.decode_tokens,
        "agents": {name: a.model_dump() for name, a in metrics.agents.items()},
        "errors": [dataclasses.asdict(e) for e in errors],
    }


def _finish_reason(metrics: Metrics, job: _Job) -> str:
    agg = next((a for a in metrics.agents.values() if a.role == "aggregator"), None)
    if agg is not None and agg.finish_reason in ("stop", "length"):
        return agg.finish_reason
    return "length" if metrics.answer_tokens >= job.answer_limit else "stop"


def _engine_failure(exc: BaseException) -> APIError:
    if isinstance(exc, TimeoutError):
        return APIError(504, "the request ran past the server's per-request timeout", "timeout_error",
                        code="timeout")
    if isinstance(exc, InvalidTokensError):
        return APIError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, CapacityError):
        return APIError(503, str(exc), "server_error", code="capacity")
    if isinstance(exc, MoAError):
        return APIError(500, str(exc), "server_error", code="moa_failed")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    return APIError(500, f"{type(exc).__name__}: {exc}", "server_error")


async def _produce(job: _Job, timeout_s: float, put: Callable[[object], None]) -> None:
    """Run the pipeline, handing each event (or a failure) to `put`; cancelling this frees every agent."""
    try:
        async with asyncio.timeout(timeout_s):
            events = job.moa.stream(job.question, job.history, mode=job.mode, max_tokens=job.max_tokens)
            async with contextlib.aclosing(events):
                async for ev in events:
                    put(ev)
    except (TimeoutError, EngineError, MoAError, ValueError) as exc:
        put(_Failure(_engine_failure(exc)))
    finally:
        put(_END)


async def _wait_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


# ---------------------------------------------------------------------------------------------- the app


def create_app(moa: MoA, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `moa` under OpenAI's chat completion API."""
    settings = settings or ServerSettings()
    app = FastAPI(title="moa-stream", description=__doc__.splitlines()[0], version="0.1.0")
    limiter = _Limiter(settings.max_concurrency)
    by_temperature: dict[float, MoA] = {}
    model_ids = [settings.model_id, *(f"{settings.model_id}:{m}" for m in MODES)]
    created = int(time.time())
    app.state.moa, app.state.settings, app.state.limiter = moa, settings, limiter

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{loc}: {err.get('msg')}")
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return JSONResponse(APIError(400, "invalid request: " + "; ".join(problems), param=param).body(),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    async def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), settings.api_key):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")

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
        return {"in_flight": limiter.in_flight, "max_concurrency": limiter.limit, "engines": engines}

    def moa_for(temperature: float | None) -> MoA:
        if temperature is None or temperature == moa.config.aggregator.temperature:
            return moa
        if temperature not in by_temperature:  # same engines, only the aggregator's sampling differs
            agg = moa.config.aggregator.model_copy(update={"temperature": temperature})
            by_temperature[temperature] = MoA(moa.config.model_copy(update={"aggregator": agg}), moa.engines)
        return by_temperature[temperature]

    def make_job(req: ChatCompletionRequest) -> _Job:
        if req.model not in model_ids:
            raise APIError(404, f"model {req.model!r} does not exist; use one of {model_ids}", param="model",
                           code="model_not_found")
        if req.n not in (None, 1):
            raise APIError(400, f"n={req.n} is not supported: the pipeline writes one answer per request",
                           param="n")
        _, _, suffix = req.model.partition(":")
        mode: Mode = suffix or moa.config.mode  # type: ignore[assignment]
        question, history = _split_messages(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens
        return _Job(moa_for(req.temperature), req.model, mode, question, history, max_tokens,
                    max_tokens or moa.config.aggregator.max_tokens)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        job = make_job(req)
        limiter.acquire()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _ReleasingStreamingResponse(_stream(job, include_usage), limiter.release)
        try:
            return await _complete(job, request.receive)
        finally:
            limiter.release()

    async def _complete(job: _Job, receive: Receive) -> JSONResponse:
        items: list[object] = []
        producer = asyncio.create_task(_produce(job, settings.request_timeout_s, items.append))
        watcher = asyncio.create_task(_wait_disconnect(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):  # a gone client cancels its agents; their sequences are freed
                task.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
        failure = next((i for i in items if isinstance(i, _Failure)), None)
        if failure is not None:
            raise failure.error
        done = next((i for i in items if isinstance(i, Done)), None)
        if done is None:  # the client left; nobody reads this
            return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
        errors = [i for i in items if isinstance(i, AgentError)]
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": job.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.answer},
                         "finish_reason": _finish_reason(done.metrics, job), "logprobs": None}],
            "usage": _usage(done.metrics),
            "moa": moa_field(done.metrics, errors),
        })

    async def _stream(job: _Job, include_usage: bool) -> AsyncIterator[str]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        producer = asyncio.create_task(_produce(job, settings.request_timeout_s, queue.put_nowait))
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            return {"id": cid, "object": "chat.completion.chunk", "created": now, "model": job.model,
                    "choices": choices, **extra}

        errors: list[AgentError] = []
        try:
            yield _sse(chunk({"role": "assistant", "content": ""}))
            while (item := await queue.get()) is not _END:
                if isinstance(item, AggregatorDelta) and item.text:
                    yield _sse(chunk({"content": item.text}))
                elif isinstance(item, AgentError):
                    errors.append(item)
                elif isinstance(item, _Failure):
                    yield _sse(item.error.body())
                elif isinstance(item, Done):
                    usage, extra = _usage(item.metrics), moa_field(item.metrics, errors)
                    finish = _finish_reason(item.metrics, job)
                    if include_usage:  # OpenAI's layout: usage in a last chunk with no choices
                        yield _sse(chunk({}, finish))
                        yield _sse({**chunk({}), "choices": [], "usage": usage, "moa": extra})
                    else:
                        yield _sse(chunk({}, finish, usage=usage, moa=extra))
            yield _sse("[DONE]")
        finally:  # also on disconnect: Starlette cancels this generator, we cancel the agents
            producer.cancel()
            # Starlette's (anyio) cancel scope re-cancels every await here; a second cancel would cut the
            # agents' cleanup short and leak their sequences, so wait for it shielded.
            with anyio.CancelScope(shield=True):
                await asyncio.gather(producer, return_exceptions=True)

    return app

