"""Mixture-of-Agents with staircase streaming on a shared stateful engine."""

from . import events
from .api import Conversation, MoA, collect
from .config import (
    AgentConfig,
    BackendConfig,
    HttpBackend,
    LlamaCppBackend,
    MoAConfig,
    StaircaseConfig,
    TransformersBackend,
    VllmBackend,
)
from .context import Message
from .errors import ConfigError, EngineError, MoAError, MoAStreamError
from .events import (
    MODES,
    AgentError,
    AgentMetrics,
    AggregatorDelta,
    ChunkIngested,
    Done,
    Event,
    FirstToken,
    Metrics,
    Mode,
    ProposerDelta,
    RunResult,
)
from .layouts import AggregatorLayout, IncrementalLayout, register_layout
from .option_scoring import OptionScores, UnsupportedFeatureError, score_options

__all__ = [
    "MODES",
    "AgentConfig",
    "AgentError",
    "AgentMetrics",
    "AggregatorDelta",
    "AggregatorLayout",
    "BackendConfig",
    "ChunkIngested",
    "ConfigError",
    "Conversation",
    "Done",
    "EngineError",
    "Event",
    "FirstToken",
    "HttpBackend",
    "IncrementalLayout",
    "LlamaCppBackend",
    "Message",
    "Metrics",
    "MoA",
    "MoAConfig",
    "MoAError",
    "MoAStreamError",
    "Mode",
    "OptionScores",
    "ProposerDelta",
    "RunResult",
    "StaircaseConfig",
    "TransformersBackend",
    "UnsupportedFeatureError",
    "VllmBackend",
    "collect",
    "events",
    "register_layout",
    "score_options",
]
