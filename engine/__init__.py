"""Tokens and KV only: the stateful engine contract and its backends.

At the top: the contract (`protocol`), its errors, stop-string matching and model loading (`models`), plus what
every engine shares (`sequence_table`, `block_pool`, `detokenizer`). The engines live in packages:
`transformers_engine` (embedded) and `remote` (HTTP servers, vLLM); `benchmark` measures any of them.
"""

from .errors import (
    BackendError,
    CapacityError,
    ContextLengthError,
    EngineError,
    EngineStoppedError,
    InvalidSamplingError,
    InvalidTokensError,
    ModelLoadError,
    ModelPartError,
    SequenceBusyError,
    SequenceClosedError,
    StepFailedError,
    UnknownSequenceError,
    UnsupportedFeatureError,
)
from .protocol import (
    Engine,
    EngineStats,
    FinishReason,
    SamplingParams,
    Sequence,
    SequenceStats,
    TokenDelta,
    Tokenizer,
)
from .stop_matcher import StopMatcher
from .structured_output import Grammar, JsonObject, JsonSchema, StructuralTag, StructuredOutput

__all__ = [
    "BackendError",
    "CapacityError",
    "ContextLengthError",
    "Engine",
    "EngineError",
    "EngineStats",
    "EngineStoppedError",
    "FinishReason",
    "Grammar",
    "InvalidSamplingError",
    "InvalidTokensError",
    "JsonObject",
    "JsonSchema",
    "ModelLoadError",
    "ModelPartError",
    "SamplingParams",
    "Sequence",
    "SequenceBusyError",
    "SequenceClosedError",
    "SequenceStats",
    "StepFailedError",
    "StopMatcher",
    "StructuralTag",
    "StructuredOutput",
    "TokenDelta",
    "Tokenizer",
    "UnknownSequenceError",
    "UnsupportedFeatureError",
]
