"""The server's routes, one router per concern: models and health, chat completions."""

from .chat import router as chat_router
from .models import router as models_router

__all__ = ["chat_router", "models_router"]
