"""Who is calling: the API key as FastAPI's bearer security, so the OpenAPI schema says how to authenticate."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..state import AppState, app_state

BEARER = HTTPBearer(auto_error=False, description="the server's API key, when it has one")  # in the OpenAPI schema

ServerState = Annotated[AppState, Depends(app_state)]
"""A route's parameter for the server's shared state."""


async def authorize(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str | None:
    """The caller's API key (None when keys are off); the gate has already refused a missing or wrong one."""
    if app_state(request).settings.api_key is None or credentials is None:
        return None
    return credentials.credentials
