"""The llama.cpp engine: many sequences in one unified KV cache, continuous batching over llama_decode."""

from .context import ContextOptions, LlamaContext, default_threads
from .engine import DEFAULT_KV_CELLS, LlamaCppEngine, accepts_model, model_path

__all__ = ["DEFAULT_KV_CELLS", "ContextOptions", "LlamaContext", "LlamaCppEngine", "accepts_model", "default_threads",
           "model_path"]
