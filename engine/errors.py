"""Typed engine errors: each names what was wrong and what to do about it."""

from __future__ import annotations


class MoAStreamError(Exception):
    """Root of every error moa-stream raises on purpose: catch this to handle them all.

    It lives in the lowest layer so engine and pipeline errors share one tree; `moa_stream.errors` re-exports it.
    """


class EngineError(MoAStreamError):
    """The engine refused or failed an operation; the message says what was wrong and what to do."""


class InvalidTokensError(EngineError, ValueError):
    """A token list is empty, too long, or holds ids outside the vocabulary."""


class ContextLengthError(InvalidTokensError):
    """A sequence would grow beyond the model's context (max_model_len); the message gives both numbers."""


class InvalidSamplingError(EngineError, ValueError):
    """Sampling parameters are out of range."""


class UnknownSequenceError(EngineError, KeyError):
    """A sequence handle does not belong to this engine."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown sequence"


class SequenceClosedError(EngineError):
    """The sequence was closed; open a new one."""


class SequenceBusyError(EngineError):
    """The sequence is generating; wait for the generation to finish or abort it first."""


class CapacityError(EngineError):
    """The KV cache budget cannot hold this sequence even after evicting every idle one."""


class ModelLoadError(EngineError):
    """A model could not be found or loaded."""


class ModelPartError(ModelLoadError):
    """A package that holds part of a model is missing or its file is corrupt; `package` names it."""

    def __init__(self, package: str, message: str) -> None:
        super().__init__(message)
        self.package = package


class BackendError(EngineError):
    """A remote backend failed (connection, HTTP status, broken stream, timeout)."""


class StepFailedError(EngineError):
    """A stage of the engine loop (scheduling, a forward pass, sampling, emitting, refusing) failed on this request's
    sequence: a bug or a device fault. Only the work that step touched fails; the engine and other requests go on,
    so the request may be retried."""


class EngineStoppedError(EngineError):
    """The engine was shut down."""


class UnsupportedFeatureError(EngineError):
    """This backend cannot do what was asked (e.g. scoring on a remote server); the message names one that can."""
