"""MoA configuration (pydantic, from YAML/TOML/dict): backends, agents, the pipeline and its knobs."""

from .agents import (
    MIN_TEMPERATURE,
    AgentConfig,
    SpeculationConfig,
    ToolCacheConfig,
    check_agent_format,
    check_temperature,
)
from .backends import BackendConfig, HttpBackend, LlamaCppBackend, TransformersBackend, VllmBackend, default_backend
from .pipeline import SIMPLE_START_POLICIES, DebateConfig, MoAConfig, StaircaseConfig

__all__ = [
    "MIN_TEMPERATURE",
    "SIMPLE_START_POLICIES",
    "AgentConfig",
    "BackendConfig",
    "DebateConfig",
    "HttpBackend",
    "LlamaCppBackend",
    "MoAConfig",
    "SpeculationConfig",
    "StaircaseConfig",
    "ToolCacheConfig",
    "TransformersBackend",
    "VllmBackend",
    "check_agent_format",
    "check_temperature",
    "default_backend",
]
