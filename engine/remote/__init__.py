"""Engines whose KV lives in another process: an OpenAI-compatible HTTP server, or vLLM in-process.

Both keep sequences on the client as token lists (ClientSequences) and lean on the backend's prefix cache.
"""

from .client_sequences import ClientSeq, ClientSequences
from .http_engine import HttpEngine
from .vllm_engine import VllmEngine

__all__ = ["ClientSeq", "ClientSequences", "HttpEngine", "VllmEngine"]
