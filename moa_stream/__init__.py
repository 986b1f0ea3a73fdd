"""Mixture-of-Agents with staircase streaming on a shared stateful engine."""

from . import events
from .agents import MoAError
from .api import Conversation, MoA
from .config import AgentConfig, BackendConfig, ConfigError, MoAConfig, StaircaseConfig
from .context import Message
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
    "Metrics",
    "MoA",
    "MoAConfig",
    "MoAError",
    "Mode",
    "ProposerDelta",
    "RunResult",
    "StaircaseConfig",
    "events",
]
