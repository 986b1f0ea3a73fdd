"""What the routes of one server share: the pipeline, the settings, the limits and the per-server bookkeeping."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from moa_stream import MODES, MoA

from .admission import AdmissionWorker, Limiter, Tenancy
from .errors import APIError
from .grammar_limits import GrammarLimits
from .sessions import Sessions
from .settings import ServerSettings

MAX_SAMPLING_VARIANTS = 32  # pipelines kept per aggregator sampling (temperature, penalties); the oldest goes first
STREAM_BUFFER_EVENTS = 64  # events a stream holds for a slow client; past it the run waits for the client


@dataclass
class AppState:
    """One server's shared state, built once by `create_app` and reached by every route through `app_state`."""

    moa: MoA
    settings: ServerSettings
    limiter: Limiter = field(init=False)
    worker: AdmissionWorker = field(init=False)
    tenancy: Tenancy = field(init=False)
    limits: GrammarLimits = field(init=False)
    sessions: Sessions = field(init=False)
    model_ids: list[str] = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))
    # Bounded: clients choosing settings must not grow it.
    variants: dict[tuple[tuple[str, object], ...], MoA] = field(default_factory=dict)
    buffers: set[asyncio.Queue[object]] = field(default_factory=set)  # each live stream's queue, for the stats

    def __post_init__(self) -> None:
        s = self.settings
        config = self.moa.config.with_tool_agents(format=s.agent_format, tool_cache=s.tool_cache)
        if config is not self.moa.config:
            self.moa = MoA(config, self.moa.engines)
        self.limiter = Limiter(s.max_concurrency)
        self.worker = AdmissionWorker(self.limiter)
        self.tenancy = Tenancy(secrets.token_bytes(32))  # drawn per server: a keyless tenant's salt cannot be guessed
        self.limits = GrammarLimits(s.max_schema_bytes, s.max_schema_repeat)
        self.sessions = Sessions(s.max_sessions, s.session_ttl_s)
        self.model_ids = [s.model_id, *(f"{s.model_id}:{m}" for m in MODES)]

    def check_model(self, model_id: str) -> None:
        """Raise the 404 `model_not_found` unless the server serves `model_id`."""
        if model_id not in self.model_ids:
            raise APIError(404, f"model {model_id!r} does not exist; use one of {self.model_ids}", param="model",
                           code="model_not_found")

    def model_card(self, model_id: str) -> dict[str, Any]:
        """OpenAI's model object for one of the served ids."""
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "moa-stream"}

    def moa_for(self, overrides: dict[str, object], agent_format: str | None = None) -> MoA:
        """The pipeline with the aggregator's sampling and the tool agents' context format changed as a request
        asks (same engines), kept for reuse."""
        agg = self.moa.config.aggregator
        changed = tuple(sorted((k, v) for k, v in overrides.items() if getattr(agg, k) != v))
        config = self.moa.config.with_tool_agents(format=agent_format, override=True)
        if config is not self.moa.config:
            changed += (("agent_format", agent_format),)
        if not changed:
            return self.moa
        if changed not in self.variants:
            if len(self.variants) >= MAX_SAMPLING_VARIANTS:
                del self.variants[next(iter(self.variants))]
            config = config.model_copy(update={"aggregator": agg.model_copy(update=overrides)})
            self.variants[changed] = MoA(config, self.moa.engines)
        return self.variants[changed]


def app_state(request: Request) -> AppState:
    """The server's state (a FastAPI dependency)."""
    state: AppState = request.app.state.server
    return state
