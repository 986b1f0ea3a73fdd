"""What a request passes before its body is read: the API key (401) and the body's size (413), as ASGI middleware.

FastAPI reads and parses a JSON body before it runs any dependency, so a key checked there comes after a
180 MB upload. Here the key is checked on the headers, a Content-Length over the limit is refused unread, and a
body without one (chunked) is counted as it streams and cut at the limit. (FastAPI 0.16x has a
`max_body_size` of its own; the server supports older FastAPI and needs the key checked first anyway.)
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

PROTECTED_PREFIX = "/v1/"  # every API route; /health and the OpenAPI docs stay open


class BodyTooLarge(HTTPException):
    """The body grew past the limit while it was being read (a chunked upload with no Content-Length)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, body_too_large(limit).message)
        self.limit = limit


def body_too_large(limit: int) -> APIError:
    """OpenAI's error body for a request over the size limit."""
    return APIError(413, f"the request body is larger than the server's limit of {limit} bytes; send less "
                    "(the server's --max-body-bytes)", param="body", code="request_too_large")


def key_matches(header: str, api_key: str) -> bool:
    """Whether an Authorization header carries `api_key` as a bearer token (any bytes compare, never raise).

    Header values arrive decoded as latin-1, so a non-ASCII token is compared as its bytes, not refused by
    `compare_digest` with a TypeError (a 500).
    """
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(token.strip().encode("latin-1", "replace"), api_key.encode())


class Gate:
    """ASGI middleware: 401 for a wrong key on /v1/ routes, then 413 for a body over `max_body_bytes`, unread."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.api_key is not None and scope.get("path", "").startswith(PROTECTED_PREFIX) \
                and not key_matches(headers.get("authorization", ""), self.api_key):
            await _answer(send, APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                         "authentication_error", code="invalid_api_key"))
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(send, body_too_large(self.max_body_bytes))
            return
        await self.app(scope, self._counted(receive), send)

    def _counted(self, receive: Receive) -> Receive:
        """`receive`, raising BodyTooLarge once the body's chunks add up past the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return counted


async def _answer(send: Send, error: APIError) -> None:
    """Send `error` as the whole response (the body is never read; the server closes the connection)."""
    body = json.dumps(error.body()).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    start: dict[str, Any] = {"type": "http.response.start", "status": error.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, api_key: str | None, max_body_bytes: int) -> None:
    """Put the gate in front of `app`, and answer a body cut at the limit (BodyTooLarge) with OpenAI's 413."""

    async def too_large(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return body_too_large(exc.limit).response()

    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_middleware(Gate, api_key=api_key, max_body_bytes=max_body_bytes)
