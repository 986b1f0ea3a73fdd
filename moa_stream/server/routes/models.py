"""`/v1/models`, one model, `/health` and `/v1/moa/stats`."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends

from ..state import STREAM_BUFFER_EVENTS
from .auth import ServerState, authorize

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(authorize)])
async def list_models(state: ServerState) -> dict[str, Any]:
    """Every id the server serves: the pipeline in its own mode, and in each mode by name."""
    return {"object": "list", "data": [state.model_card(m) for m in state.model_ids]}


@router.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
async def get_model(model_id: str, state: ServerState) -> dict[str, Any]:
    """One served model, or 404."""
    state.check_model(model_id)
    return state.model_card(model_id)


@router.get("/health")
async def health(state: ServerState) -> dict[str, Any]:
    """Liveness, and how many requests are in flight."""
    return {"status": "ok", "in_flight": state.limiter.in_flight}


@router.get("/v1/moa/stats", dependencies=[Depends(authorize)])
async def stats(state: ServerState) -> dict[str, Any]:
    """Requests in flight, events buffered for slow clients, and every engine's counters."""
    engines = {name: dataclasses.asdict(s) for name, s in state.moa.engine_stats().items()}
    buffered = {"events": sum(q.qsize() for q in state.buffers), "per_stream_limit": STREAM_BUFFER_EVENTS}
    return {"in_flight": state.limiter.in_flight, "max_concurrency": state.limiter.limit, "stream_buffer": buffered,
            "engines": engines}
