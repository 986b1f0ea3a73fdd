"""Tokens and KV only: the stateful engine contract and its backends."""

from .errors import (
    BackendError,
    CapacityError,
    EngineError,
    EngineStoppedError,
    InvalidSamplingError,
    InvalidTokensError,
    ModelLoadError,
    SequenceBusyError,
    SequenceClosedError,
    UnknownSequenceError,
)
from .protocol import Engine, EngineStats, FinishReason, SamplingParams, Sequence, SequenceStats, TokenDelta

__all__ = [
    "BackendError",
    "CapacityError",
    "Engine",
    "EngineError",
    "EngineStats",
    "EngineStoppedError",
    "FinishReason",
    "InvalidSamplingError",
    "InvalidTokensError",
    "ModelLoadError",
    "SamplingParams",
    "Sequence",
    "SequenceBusyError",
    "SequenceClosedError",
    "SequenceStats",
    "TokenDelta",
    "UnknownSequenceError",
]
