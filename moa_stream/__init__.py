"""Mixture-of-Agents with staircase streaming on a shared stateful engine."""

from . import events
from .agent_formats import AGENT_FORMATS, AgentFormat, agent_format, register_agent_format
from .api import Conversation, MoA, collect
from .bfcl_traces import BfclCase, Trace, TraceCall, load_cases, replay
from .config import (
    AgentConfig,
    BackendConfig,
    HttpBackend,
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
from .next_step import Episode, StepOutcome, predict_next_steps

__all__ = [
    "AGENT_FORMATS",
    "MODES",
    "AgentConfig",
    "AgentError",
    "AgentFormat",
    "AgentMetrics",
    "AggregatorDelta",
    "AggregatorLayout",
    "BackendConfig",
    "BfclCase",
    "ChunkIngested",
    "ConfigError",
    "Conversation",
    "Done",
    "EngineError",
    "Episode",
    "Event",
    "FirstToken",
    "HttpBackend",
    "IncrementalLayout",
    "Message",
    "Metrics",
    "MoA",
    "MoAConfig",
    "MoAError",
    "MoAStreamError",
    "Mode",
    "ProposerDelta",
    "RunResult",
    "StaircaseConfig",
    "StepOutcome",
    "Trace",
    "TraceCall",
    "TransformersBackend",
    "VllmBackend",
    "agent_format",
    "collect",
    "events",
    "load_cases",
    "predict_next_steps",
    "register_agent_format",
    "register_layout",
    "replay",
]
