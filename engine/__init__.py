"""Tokens and KV only: the stateful engine contract and its backends.

At the top: the contract (`protocol`), its errors, stop-string matching, structured outputs and the response
cache; what both local engines share (`local_engine`, `scheduler`, `preemption`, `sequence_table`, `block_pool`,
`detokenizer`). The engines live in packages: `transformers_engine` (embedded), `llamacpp_engine` and `remote`
(HTTP servers, vLLM). Other layers import this package's names, or a module of `PUBLIC_MODULES` by its path.
"""

from .errors import (
    BackendError,
    CapacityError,
    ContextLengthError,
    EngineError,
    EngineStoppedError,
    InvalidSamplingError,
    InvalidTokensError,
    MoAStreamError,
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
from .response_cache import ResponseCache
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
    "MoAStreamError",
    "ModelLoadError",
    "ModelPartError",
    "ResponseCache",
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

# Submodules other layers may import by their path (heavier to load, or a backend of its own); nothing outside
# engine/ imports any other engine module (tests/test_import_fences.py checks it).
PUBLIC_MODULES = ("llama_server", "llamacpp_engine", "model_registry", "models", "prompt_lookup", "remote",
                  "structured_state", "transformers_engine")
