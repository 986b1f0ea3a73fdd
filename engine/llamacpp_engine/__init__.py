"""The llama.cpp engine: many sequences in one unified KV cache, continuous batching over llama_decode."""

from .context import ContextOptions, LlamaContext
from .engine import DEFAULT_KV_CELLS, LlamaCppEngine

__all__ = ["DEFAULT_KV_CELLS", "ContextOptions", "LlamaContext", "LlamaCppEngine"]
