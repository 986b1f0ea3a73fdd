"""The OpenAI-compatible wire format: request fields, chat messages from a ChatML history, server-sent events.

Pure translation and parsing, no engine state: `HttpEngine` builds its requests and reads its streams with these.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ..errors import BackendError, UnsupportedFeatureError
from ..protocol import GREEDY_TEMPERATURE, FinishReason, SamplingParams
from ..structured_output import Grammar, JsonObject, JsonSchema, StructuralTag, StructuredOutput

Api = Literal["tokens", "text", "chat"]
Dialect = Literal["llama.cpp", "llama-cpp-python", "vllm", "openai"]
"""How a server family spells structured output (see structured_fields)."""
DIALECTS: tuple[Dialect, ...] = ("llama.cpp", "llama-cpp-python", "vllm", "openai")
# `owned_by` of /v1/models as each family reports it; any other server is spoken to in OpenAI's own terms.
_OWNERS: dict[str, Dialect] = {"llamacpp": "llama.cpp", "me": "llama-cpp-python", "vllm": "vllm"}
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\s*|$)", re.DOTALL)


def normalize_base_url(base_url: str) -> str:
    """`http://host:port` -> `http://host:port/v1`; a URL with a path is kept as given (without a trailing /)."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise BackendError("base_url is empty: give the server root, e.g. http://127.0.0.1:8080/v1")
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendError(f"base_url {base_url!r} is not an http(s) URL: use e.g. http://127.0.0.1:8080/v1")
    return url if parts.path not in ("", "/") else url + "/v1"


def sampling_body(params: SamplingParams, eos_token_ids: frozenset[int]) -> dict[str, Any]:
    """OpenAI request fields for SamplingParams; non-standard fields only when they are needed.

    Stop strings are matched on the client (see HttpEngine.generate), so they are not sent.
    """
    # A temperature below GREEDY_TEMPERATURE is greedy here too, whatever the server would make of it.
    temperature = 0.0 if params.temperature < GREEDY_TEMPERATURE else params.temperature
    body: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": temperature}
    if params.top_p < 1.0:
        body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    if params.top_k > 0:
        body["top_k"] = params.top_k  # vLLM, SGLang and llama.cpp accept it; OpenAI does not
    if params.stop_token_ids:
        body["stop_token_ids"] = list(params.stop_token_ids)
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty  # vLLM, SGLang; llama.cpp reads repeat_penalty
        body["repeat_penalty"] = params.repetition_penalty
    if params.min_p > 0.0:
        body["min_p"] = params.min_p  # vLLM, SGLang and llama.cpp
    banned = set(params.banned_token_ids)
    if params.ignore_eos:
        body["ignore_eos"] = True  # vLLM/SGLang; the logit bias below does it on the others
        banned |= eos_token_ids
    if banned:
        body["logit_bias"] = {str(t): -100 for t in sorted(banned)}
    return body


def dialect_of(models_body: Any) -> Dialect:
    """The structured-output dialect of a server from its /v1/models answer (`owned_by`); OpenAI's by default."""
    data = models_body.get("data") if isinstance(models_body, dict) else None
    owner = data[0].get("owned_by") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    return _OWNERS.get(str(owner), "openai")


def structured_fields(structured: StructuredOutput, dialect: Dialect) -> dict[str, Any]:
    """Request fields that ask a server of this dialect for structured output; UnsupportedFeatureError if it has
    no way to express this kind.

    llama.cpp's server reads `json_schema` and GBNF `grammar`; llama-cpp-python's reads only `grammar`; vLLM
    reads `structured_outputs` (json, json_object, grammar, structural_tag); OpenAI reads `response_format`.
    """
    match dialect, structured:
        case "llama.cpp", JsonSchema():
            return {"json_schema": structured.as_dict()}
        case "llama.cpp", JsonObject():
            return {"json_schema": {"type": "object"}}
        case ("llama.cpp" | "llama-cpp-python"), Grammar():
            return {"grammar": structured.ebnf}
        case "vllm", JsonSchema():
            return {"structured_outputs": {"json": structured.as_dict()}}
        case "vllm", JsonObject():
            return {"structured_outputs": {"json_object": True}}
        case "vllm", Grammar():
            return {"structured_outputs": {"grammar": structured.ebnf}}
        case "vllm", StructuralTag():
            return {"structured_outputs": {"structural_tag": structured.spec}}
        case "openai", JsonSchema():
            return {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "output", "schema": structured.as_dict(),
                                                        "strict": True}}}
        case "openai", JsonObject():
            return {"response_format": {"type": "json_object"}}
    ways = {"llama.cpp": "JsonSchema, JsonObject or Grammar", "llama-cpp-python": "Grammar (GBNF)",
            "vllm": "any kind", "openai": "JsonSchema or JsonObject (response_format)"}
    raise UnsupportedFeatureError(
        f"{type(structured).__name__} structured output cannot be sent to a {dialect} server: it takes "
        f"{ways[dialect]}; use another kind, a server that takes it (vLLM takes every kind), or the embedded "
        "transformers engine (xgrammar)")


def chat_messages(text: str) -> tuple[list[dict[str, str]], bool]:
    """Split a ChatML history into messages; returns (messages, whether the last one is a partial answer)."""
    turns = [(m.group(1), m.group(2), m.group(0).rstrip().endswith("<|im_end|>")) for m in _CHATML.finditer(text)]
    if not turns:
        return [{"role": "user", "content": text}], False
    messages = [{"role": role, "content": content} for role, content, _ in turns]
    last_role, last_content, last_closed = turns[-1]
    if last_role == "assistant" and not last_closed:
        if not last_content:
            messages.pop()  # the bare generation prompt: the server adds its own
            return messages, False
        return messages, True
    return messages, False


def finish_reason(raw: Any) -> FinishReason:
    """Map a server's finish_reason onto the engine's three."""
    if raw == "length":
        return "length"
    if raw in ("abort", "cancelled"):
        return "abort"
    return "stop"


def describe(exc: BaseException) -> str:
    """An exception as 'Type: message' for error texts."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_message(event: dict[str, Any]) -> str:
    """The message of an OpenAI-style error object."""
    err = event.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


async def error_detail(resp: httpx.Response) -> str:
    """The server's error message from a non-200 response (first 300 characters), closing the response."""
    try:
        raw = await resp.aread()
    except httpx.HTTPError as exc:
        return f"(could not read the error body: {describe(exc)})"
    finally:
        await resp.aclose()
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or resp.reason_phrase
    if isinstance(data, dict):
        if "error" in data:
            return error_message(data)[:300]
        if "detail" in data:  # FastAPI validation errors
            return str(data["detail"])[:300]
    return text[:300]


def choice_text(choice: dict[str, Any], api: Api) -> str:
    """The new text of one streamed choice (completions or chat)."""
    if api == "chat":
        delta = choice.get("delta") or {}
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


async def sse_events(resp: httpx.Response, url: str, timeout_s: float) -> AsyncIterator[dict[str, Any]]:
    """JSON payloads of a server-sent-events stream, until [DONE]; transport failures become BackendError."""
    data: list[str] = []
    try:
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                continue  # a comment / keep-alive ping
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
                continue
            if line.strip() or not data:
                continue  # other fields (event:, id:, retry:) carry nothing we use
            payload, data = "\n".join(data), []
            if payload == "[DONE]":
                return
            yield parse_event(payload, url)
        if data and (payload := "\n".join(data)) != "[DONE]":
            yield parse_event(payload, url)
    except httpx.TimeoutException as exc:
        raise BackendError(f"{url}: the stream stalled: no data for {timeout_s:g} s") from exc
    except (httpx.StreamClosed, httpx.StreamConsumed) as exc:
        raise BackendError(f"{url}: the stream was closed") from exc
    except httpx.TransportError as exc:
        raise BackendError(f"{url}: the stream was cut mid-way ({describe(exc)})") from exc


def parse_event(payload: str, url: str) -> dict[str, Any]:
    """One SSE payload as a JSON object, or BackendError naming the URL."""
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise BackendError(f"{url}: the server sent an event that is not JSON: {payload[:200]!r}") from exc
    if not isinstance(event, dict):
        raise BackendError(f"{url}: the server sent an event that is not a JSON object: {payload[:200]!r}")
    return event
