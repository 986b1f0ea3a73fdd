"""The FastAPI app where the MoA pipeline is a model: `/v1/models`, `/v1/chat/completions`, health and stats.

The routes live in `routes/` (models and health, chat completions, how an answer is sent), over one `AppState`.
"""

from __future__ import annotations

from fastapi import FastAPI

from moa_stream import MoA

from . import gate
from .errors import install_error_handlers
from .routes import chat_router, models_router
from .settings import ServerSettings
from .state import AppState


def create_app(moa: MoA, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `moa` under OpenAI's chat completion API."""
    state = AppState(moa, settings or ServerSettings())
    app = FastAPI(title="moa-stream", description=__doc__.splitlines()[0], version="0.1.0")
    app.state.server = state  # what `state.app_state` hands every route
    install_error_handlers(app)
    gate.install(app, state.settings.api_key, state.settings.max_body_bytes)
    app.include_router(models_router)
    app.include_router(chat_router)
    return app
