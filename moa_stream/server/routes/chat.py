"""`/v1/chat/completions`: a request checked and admitted as a Job, then answered whole or as server-sent events.

Past `max_concurrency` requests get 429 at once; the slot is held from admission to the response's last byte.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from moa_stream import Mode
from moa_stream.tools import call_format

from ..admission import check_context_length, tenant_salt
from ..errors import APIError
from ..grammar_limits import check_schema
from ..jobs import Job, split_messages
from ..request_checks import banned_tokens, check_text, refuse_unsupported
from ..response_format import answer_structure, check_compiles, compile_too_slow
from ..schema import ChatCompletionRequest
from ..sessions import SESSION_HEADER
from ..state import AppState
from ..tool_calls import ToolRequest
from .answers import SEND_GRACE_S, ReleasingStreamingResponse, complete, stream
from .auth import ServerState, authorize

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(req: ChatCompletionRequest, request: Request, state: ServerState,
                           api_key: Annotated[str | None, Depends(authorize)]) -> JSONResponse | StreamingResponse:
    """OpenAI's chat completion, answered by the MoA pipeline (streamed when `stream` is set)."""
    limiter = state.limiter
    limiter.acquire()  # first: a refused request costs nothing, and admission's threads are bounded
    try:
        job = make_job(state, req, api_key, request.client.host if request.client else None)
        await admit(state, job)
        job = await state.sessions.join(job, request.headers.get(SESSION_HEADER))
    except BaseException:
        limiter.release()
        raise
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return ReleasingStreamingResponse(stream(state, job, include_usage), limiter.release,
                                          state.settings.request_timeout_s + SEND_GRACE_S)
    try:
        return await complete(state, job, request.receive)
    finally:
        limiter.release()


def make_job(state: AppState, req: ChatCompletionRequest, api_key: str | None, peer: str | None) -> Job:
    """The request as a Job, from checks that cost little; `admit` then does the costly ones."""
    moa, settings = state.moa, state.settings
    state.check_model(req.model)
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
        check_schema(spec.function.parameters or {}, f"tools[{i}].function.parameters", "tools", state.limits)
    structured = tools.structured() if tools else answer_structure(req.response_format, state.limits)
    question, history = split_messages(req.messages, tools)
    requested = req.max_completion_tokens or req.max_tokens or moa.config.aggregator.max_tokens
    answer_limit = min(requested, settings.max_tokens or requested)  # serve --max-tokens caps every answer
    return Job(state.moa_for(overrides, req.agent_format), req.model, mode, question, history, answer_limit,
               answer_limit, tenant_salt(api_key, req.cache_salt, state.tenancy.peer_salt(peer)), structured, tools,
               stops=req.stop_strings())


async def admit(state: AppState, job: Job) -> None:
    """Compile the answer's grammar (time-limited) and count the prompt's tokens, on worker threads."""
    moa, settings, worker = state.moa, state.settings, state.worker
    if job.structured is not None:
        param = "tools" if job.tools else "response_format"
        structured = job.structured
        await worker.run(lambda: check_compiles(moa, structured, param), settings.compile_timeout_s,
                         lambda: compile_too_slow(param, settings.compile_timeout_s))
    await worker.run(lambda: check_context_length(moa, job.question, job.history, job.answer_limit))
