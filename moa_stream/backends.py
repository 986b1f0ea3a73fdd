"""Build one engine per configured backend; agents on the same local model share one engine."""

from __future__ import annotations

import os

from engine import Engine, ResponseCache
from engine.prompt_lookup import PromptLookup

from .config import BackendConfig, HttpBackend, LlamaCppBackend, TransformersBackend, VllmBackend
from .errors import ConfigError


def build_engine(cfg: BackendConfig, model_override: str | None = None) -> Engine:
    """An engine for one backend config (remote backends are imported only when used)."""
    model = model_override or cfg.model
    if isinstance(cfg, TransformersBackend):
        from engine.transformers_engine import TransformersEngine

        kv = int(cfg.kv_cache_gb * (1 << 30)) if cfg.kv_cache_gb else None
        return TransformersEngine.from_pretrained(
            model, kv_cache_bytes=kv, prompt_lookup=_prompt_lookup(cfg.prompt_lookup_tokens),
            response_cache=_response_cache(cfg.response_cache_entries),
            **cfg.engine_options("model", "kv_cache_gb", "prompt_lookup_tokens", "response_cache_entries"))
    if isinstance(cfg, LlamaCppBackend):
        from engine.llamacpp_engine import LlamaCppEngine, accepts_model

        if not accepts_model(model):  # a HF model given for the default backend (--model): transformers runs it
            return build_engine(TransformersBackend(model=model, **cfg.local_options()))
        return LlamaCppEngine(model, prompt_lookup=_prompt_lookup(cfg.prompt_lookup_tokens),
                              response_cache=_response_cache(cfg.response_cache_entries),
                              **cfg.engine_options("model", "prompt_lookup_tokens", "response_cache_entries"))
    if isinstance(cfg, HttpBackend):
        from engine.remote import HttpEngine

        api_key = None
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ConfigError(f"backend needs an API key in ${cfg.api_key_env}, which is not set")
        return HttpEngine(cfg.base_url, cfg.model, api_key=api_key,
                          **cfg.engine_options("base_url", "model", "api_key_env"))
    if isinstance(cfg, VllmBackend):
        from engine.remote import VllmEngine

        if not model:
            raise ConfigError("a vllm backend needs model: <HF id or folder>")
        return VllmEngine(model, **cfg.engine_args, **cfg.engine_options("model", "engine_args"))
    raise ConfigError(f"unknown backend config {type(cfg).__name__}; use transformers, llamacpp, http or vllm")


def _prompt_lookup(tokens: int) -> PromptLookup | None:
    return PromptLookup(max_draft=tokens) if tokens else None


def _response_cache(entries: int) -> ResponseCache | None:
    return ResponseCache(entries) if entries else None


def build_engines(backends: dict[str, BackendConfig], model_override: str | None = None) -> dict[str, Engine]:
    """Engines by backend name; identical local configs share one engine (one copy of the weights)."""
    built: dict[str, Engine] = {}
    by_config: dict[str, Engine] = {}
    for name, cfg in backends.items():
        override = model_override if name == "default" else None
        key = cfg.model_dump_json() + f"|{override}"
        if key not in by_config:
            by_config[key] = build_engine(cfg, override)
        built[name] = by_config[key]
    return built
