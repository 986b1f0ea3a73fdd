"""A small real OpenAI-style HTTP server on loopback that misbehaves on purpose, for HttpEngine's failure tests.

It is a fake model (it writes fixed words, tokenized with the real SmolLM2 tokenizer): a real server cannot be
made to refuse, fail, cut or stall on demand. The first path segment picks the behaviour, so one server serves
every test: http://127.0.0.1:PORT/<behaviour>/v1/completions.

Behaviours: ok (token-id prompts, streams token_ids and usage with cached_tokens, like vLLM), text-only
(rejects token-id prompts with 422, like llama-cpp-python), chat-only (404 on /completions), fail500
(always 500), flaky (503 with Retry-After: 0 on the first two requests of each id, then ok), cut (drops the
connection after three chunks), stall (one chunk, then silence), stall-headers (never answers), error-event
(an error event mid-stream), no-finish ([DONE] without a finish_reason), pieces (streams the request's extra
field `pieces`, one text chunk each, then finishes).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.llama_server import free_port

WORDS = "The sky looks blue because air scatters short blue light more than red light".split()


@dataclass
class Recorded:
    """One request the server received."""

    behaviour: str
    path: str
    body: dict[str, Any]


@dataclass
class ServerState:
    """What the server saw (tests assert on it) and the event that releases stalled handlers."""

    tokenizer: Any
    requests: list[Recorded] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event | None = None


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def _prompt_len(state: ServerState, body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return len(prompt)
    if isinstance(prompt, str):
        return len(state.tokenizer.encode(prompt, add_special_tokens=False))
    return sum(len(state.tokenizer.encode(m.get("content", ""))) for m in body.get("messages", []))


async def _completion(state: ServerState, body: dict[str, Any], behaviour: str, chat: bool) -> AsyncIterator[bytes]:
    pieces = [str(p) for p in body.get("pieces") or []] if behaviour == "pieces" else None
    n = len(pieces) if pieces is not None else int(body.get("max_tokens") or 16)
    with_ids = bool(body.get("return_token_ids"))
    for i in range(n):
        word = pieces[i] if pieces is not None else (" " if i else "") + WORDS[i % len(WORDS)]
        if behaviour == "cut" and i == 3:
            raise ConnectionAbortedError("cut on purpose")  # uvicorn drops the connection mid-body
        if behaviour == "error-event" and i == 2:
            yield _sse({"error": {"message": "CUDA out of memory (on purpose)", "code": 500}})
            return
        if behaviour == "stall" and i == 1:
            assert state.release is not None
            await state.release.wait()
            return
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        if chat:
            choice["delta"] = {"content": word}
        else:
            choice["text"] = word
        if with_ids:
            choice["token_ids"] = state.tokenizer.encode(word, add_special_tokens=False)
        yield _sse({"object": "text_completion", "choices": [choice]})
        await asyncio.sleep(0)
    if behaviour != "no-finish":
        last: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        last["delta" if chat else "text"] = {} if chat else ""
        yield _sse({"choices": [last]})
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt = _prompt_len(state, body)
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
                 "prompt_tokens_details": {"cached_tokens": max(prompt - 16, 0) // 16 * 16}}
        yield _sse({"choices": [], "usage": usage})
    yield _sse("[DONE]")


def make_app(state: ServerState) -> Starlette:
    """The Starlette app: one route for each endpoint, behaviour from the first path segment."""

    async def handle(request: Request) -> Response:
        behaviour = request.path_params["behaviour"]
        endpoint = request.path_params["endpoint"]
        body = await request.json()
        state.requests.append(Recorded(behaviour, endpoint, body))
        key = f"{behaviour}:{body.get('user', '')}"
        state.hits[key] += 1
        chat = endpoint == "chat/completions"
        if behaviour == "stall-headers":
            assert state.release is not None
            await state.release.wait()
            return JSONResponse({"error": "released"}, status_code=503)
        if behaviour == "fail500":
            return JSONResponse({"error": {"message": "internal error (on purpose)"}}, status_code=500)
        if behaviour == "flaky" and state.hits[key] <= 2:
            return JSONResponse({"error": {"message": "busy"}}, status_code=503, headers={"Retry-After": "0"})
        if behaviour == "text-only" and isinstance(body.get("prompt"), list):
            return JSONResponse({"detail": [{"msg": "Input should be a valid string", "loc": ["body", "prompt"]}]},
                                status_code=422)
        if behaviour == "chat-only" and not chat:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return StreamingResponse(_completion(state, body, behaviour, chat), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-smollm2", "object": "model"}]})

    return Starlette(routes=[
        Route("/{behaviour}/v1/models", models, methods=["GET"]),
        Route("/{behaviour}/v1/{endpoint:path}", handle, methods=["POST"]),
    ])


class MisbehavingServer:
    """Runs the app with uvicorn on its own thread and event loop, so a stalled handler never blocks the test."""

    def __init__(self, tokenizer: Any) -> None:
        self.state = ServerState(tokenizer)
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        config = uvicorn.Config(make_app(self.state), host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="misbehaving-server", daemon=True)

    def url(self, behaviour: str) -> str:
        """Base URL (ending in /v1) for one behaviour."""
        return f"http://127.0.0.1:{self.port}/{behaviour}/v1"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self.state.release = asyncio.Event()
        self._loop.run_until_complete(self._server.serve())

    def start(self, wait_s: float = 20.0) -> None:
        """Start serving; raises if the server is not up within wait_s."""
        self._thread.start()
        for _ in range(int(wait_s * 100)):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise RuntimeError(f"misbehaving server did not start on port {self.port}")

    def stop(self) -> None:
        """Release stalled handlers and stop the server."""
        if self._loop is not None and self.state.release is not None:
            self._loop.call_soon_threadsafe(self.state.release.set)
        self._server.should_exit = True
        self._thread.join(timeout=10)
