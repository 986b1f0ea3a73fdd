"""Errors answered as OpenAI's JSON error body, and how pipeline and request failures map onto them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import CapacityError, InvalidTokensError
from moa_stream import AgentError, MoAError, MoAStreamError


class APIError(MoAStreamError):
    """An error answered as OpenAI's JSON error body with an HTTP status; the message tells the client what to fix."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def with_agent_errors(self, errors: Sequence[AgentError]) -> APIError:
        """This error with the agents' own failures appended to its message (they say why the run failed)."""
        if not errors:
            return self
        why = "; ".join(f"{e.agent}: {e.error}" for e in errors)
        return APIError(self.status, f"{self.message} ({why})", self.type, self.param, self.code, self.headers)

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, nearest first (bounded: chains can loop)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain and len(chain) < 16:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def failure_of(exc: BaseException) -> APIError:
    """The HTTP answer to a run that failed: timeout 504, too long 400, no KV room 503, no answer 500."""
    if isinstance(exc, TimeoutError):
        return APIError(504, "the request ran past the server's per-request timeout", "timeout_error",
                        code="timeout")
    too_long = next((e for e in _causes(exc) if isinstance(e, InvalidTokensError)), None)
    if too_long is not None:  # also when the pipeline's failure was caused by one (every proposer hit the limit)
        return APIError(400, str(too_long), param="messages", code="context_length_exceeded")
    if isinstance(exc, CapacityError):
        return APIError(503, str(exc), "server_error", code="capacity")
    if isinstance(exc, MoAError):
        return APIError(500, str(exc), "server_error", code="moa_failed")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    return APIError(500, f"{type(exc).__name__}: {exc}", "server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Answer APIError, invalid requests and unknown routes with OpenAI-style JSON errors."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{loc}: {err.get('msg')}")
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return APIError(400, "invalid request: " + "; ".join(problems), param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=code).response()
