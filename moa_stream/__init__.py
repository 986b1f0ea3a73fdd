"""Mixture-of-Agents with staircase streaming on a shared stateful engine."""

from . import events
from .api import Conversation, MoA, collect
from .config import AgentConfig, BackendConfig, MoAConfig, StaircaseConfig
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

__all__ = [
    "MODES",
    "AgentConfig",
    "AgentError",
    "AgentMetrics",
    "AggregatorDelta",
    "BackendConfig",
    "ChunkIngested",
    "ConfigError",
    "Conversation",
    "Done",
    "Event",
    "FirstToken",
    "Message",
    "EngineError",
    "Metrics",
    "MoA",
    "MoAConfig",
    "MoAError",
    "MoAStreamError",
    "Mode",
    "ProposerDelta",
    "RunResult",
    "StaircaseConfig",
    "collect",
    "events",
]
