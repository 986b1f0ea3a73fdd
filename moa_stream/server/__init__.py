"""The OpenAI-compatible HTTP server where the MoA pipeline is a model (FastAPI).

`create_app(moa, ServerSettings(...))` gives the app for embedding; `moa-stream serve` runs it with uvicorn.
"""

from .app import create_app
from .errors import APIError
from .loopback import LoopbackServer, serving
from .settings import ServerSettings

__all__ = ["APIError", "LoopbackServer", "ServerSettings", "create_app", "serving"]
