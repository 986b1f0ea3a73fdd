"""Fresh engines for the bench's scenarios: one factory per backend, the KV budget given in tokens.

A scenario's budget is a number of tokens (what the agents' contexts need, shared prefixes counted once); each
factory turns it into its engine's own knob: bytes of paged KV for the transformers engine, cells for llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from engine import Engine
from engine.prompt_lookup import PromptLookup


class EngineFactory(Protocol):
    """Builds a fresh engine for a KV budget in tokens (None: the engine's default), prompt lookup optional."""

    backend: str

    def __call__(self, kv_budget_tokens: int | None, prompt_lookup: PromptLookup | None = None) -> Engine:
        """A fresh engine."""
        ...

    def kv_bytes_per_token(self, engine: Engine) -> int:
        """KV bytes one token takes in the engine's model."""
        ...

    def peer_threads(self) -> int | None:
        """CPU threads for llama.cpp's server peer, to match the engine's (None: the server's default)."""
        ...


def transformers_kv_bytes_per_token(engine: Any) -> int:
    """KV bytes one token takes in a transformers engine's model (keys and values, every layer)."""
    cfg = engine.model.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    elem = next(engine.model.parameters()).element_size()
    return 2 * int(cfg.num_hidden_layers) * heads * head_dim * elem


@dataclass
class TransformersFactory:
    """TransformersEngine over one loaded model (loaded once, shared by every scenario's engine)."""

    loaded: Any  # engine.models.LoadedModel
    options: dict[str, Any] = field(default_factory=dict)  # other constructor options (block_size, max_model_len)
    backend: str = "transformers"

    def __call__(self, kv_budget_tokens: int | None, prompt_lookup: PromptLookup | None = None) -> Engine:
        """A fresh TransformersEngine whose paged KV holds `kv_budget_tokens` tokens."""
        from engine.transformers_engine import TransformersEngine

        kv_bytes = None
        if kv_budget_tokens is not None:
            kv_bytes = kv_budget_tokens * self._bytes_per_token()
        return TransformersEngine(self.loaded, kv_cache_bytes=kv_bytes, prompt_lookup=prompt_lookup, **self.options)

    def _bytes_per_token(self) -> int:
        return transformers_kv_bytes_per_token(self.loaded)

    def kv_bytes_per_token(self, engine: Engine) -> int:
        """KV bytes per token of the loaded model."""
        return self._bytes_per_token()

    def peer_threads(self) -> int | None:
        """torch picks its own threads; the peer keeps its default."""
        return None


@dataclass
class LlamaCppFactory:
    """LlamaCppEngine on a GGUF (default: the shipped one); the KV budget is its cell count."""

    model: str | None = None
    threads: int | None = None  # None: the engine's default (the cores but one)
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = "llamacpp"

    def __call__(self, kv_budget_tokens: int | None, prompt_lookup: PromptLookup | None = None) -> Engine:
        """A fresh LlamaCppEngine with `kv_budget_tokens` cells (its default when None)."""
        from engine.llamacpp_engine import DEFAULT_KV_CELLS, LlamaCppEngine

        return LlamaCppEngine(self.model, kv_cells=kv_budget_tokens or DEFAULT_KV_CELLS, threads=self.threads,
                              prompt_lookup=prompt_lookup, **self.options)

    def kv_bytes_per_token(self, engine: Engine) -> int:
        """Bytes of one KV cell (f16 keys and values, every layer)."""
        return int(engine.context.bytes_per_cell)  # type: ignore[attr-defined]

    def peer_threads(self) -> int | None:
        """The CPU threads its engines decode with (the peer server gets as many, for a like-for-like figure)."""
        from engine.llamacpp_engine import default_threads

        return self.threads or default_threads()
