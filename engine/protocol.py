"""The engine contract every backend meets: sequences whose KV stays alive, appended in O(Δ)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .errors import InvalidSamplingError
from .structured_output import StructuredOutput

FinishReason = Literal["stop", "length", "abort"]

# Temperatures below this sample greedily (as vLLM's _SAMPLING_EPS): dividing logits by them overflows to inf.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Sequence:
    """Handle to a token list whose KV the engine keeps; only its engine can use it."""

    id: int
    engine_id: int = field(repr=False, default=0)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated on construction so bad values never reach the engine loop."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    banned_token_ids: tuple[int, ...] = ()  # never sampled (OpenAI's logit_bias of -100)
    # Against loops, as transformers / llama.cpp / OpenAI define them (1.0 and 0.0 are off):
    repetition_penalty: float = 1.0  # HF: logits of tokens in the context (prompt + generated) /= p if > 0 else *= p
    frequency_penalty: float = 0.0  # OpenAI: logit -= f * count of the token among the generated ones
    presence_penalty: float = 0.0  # OpenAI: logit -= p once the token was generated at all
    min_p: float = 0.0  # drop tokens whose probability is below min_p x the most likely one's
    structured: StructuredOutput | None = None  # constrain the output (JSON schema, any JSON object, grammar)
    # Tokens the output already holds from earlier generations (a staircase answer resumed after an intake):
    # the grammar goes on after them instead of starting afresh.
    structured_resume: tuple[int, ...] = ()
    # Who is served first when work competes for a step (lower first, vLLM's convention): the local schedulers
    # order each step by it, then by arrival (a MoA turn puts the aggregator, whose tokens the user waits for,
    # ahead of its proposers). vLLM gets it where its scheduling_policy is "priority"; HTTP servers never see it.
    priority: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "banned_token_ids", tuple(self.banned_token_ids))
        object.__setattr__(self, "structured_resume", tuple(self.structured_resume))
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidSamplingError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidSamplingError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidSamplingError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidSamplingError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise InvalidSamplingError(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty!r}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise InvalidSamplingError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise InvalidSamplingError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidSamplingError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidSamplingError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise InvalidSamplingError(f"stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}")
        if self.structured is not None and not isinstance(self.structured, StructuredOutput):
            kinds = "JsonSchema, JsonObject, Grammar or StructuralTag"
            raise InvalidSamplingError(f"structured must be a {kinds}, got {self.structured!r}")
        if self.structured_resume and (self.structured is None or any(
                not isinstance(t, int) or t < 0 for t in self.structured_resume)):
            raise InvalidSamplingError("structured_resume must be non-negative token ids, with `structured` set")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise InvalidSamplingError(f"priority must be an integer (lower is served first), got {self.priority!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.banned_token_ids):
            raise InvalidSamplingError(f"banned_token_ids must be non-negative ints, got {self.banned_token_ids!r}")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature below GREEDY_TEMPERATURE counts as 0, as in vLLM)."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """True when a penalty reads the token history (the sampler then needs it)."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass(frozen=True)
class TokenDelta:
    """One step of a generation: the new token ids, their new text, and why it ended (last delta only)."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None


@dataclass
class SequenceStats:
    """What one sequence cost: tokens computed by prefill, reused from cache, and decoded."""

    prefill_computed: int = 0
    prefill_reused: int = 0
    decode_tokens: int = 0
    recomputed_after_eviction: int = 0
    evicted_tokens: int = 0  # computed tokens whose KV was given back (evicted or preempted), tail first


@dataclass
class EngineStats:
    """Engine-wide counters (the ones the tests assert) and gauges."""

    prefill_computed: int = 0
    prefill_reused: int = 0
    decode_tokens: int = 0
    sequences_resident: int = 0
    sequences_open: int = 0
    kv_bytes_resident: int = 0
    kv_bytes_budget: int = 0
    evictions: int = 0
    forward_steps: int = 0
    draft_tokens: int = 0  # tokens prompt lookup guessed and the model verified
    draft_accepted: int = 0  # of those, the ones sampling reproduced (each saved a forward pass)
    response_cache_hits: int = 0  # generations answered from the response cache, with no compute
    preemptions: int = 0  # busy sequences whose KV went to older work, to be recomputed when they resume
    evicted_tokens: int = 0  # computed tokens whose KV was given back (evicted or preempted), tail first
    recomputed_after_eviction: int = 0  # of those, the ones computed again because a sequence went on


@runtime_checkable
class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the upper layers use."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Seq[int], skip_special_tokens: bool = ...) -> str: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __len__(self) -> int: ...


@runtime_checkable
class Engine(Protocol):
    """A stateful engine: sequences keep their KV, appends cost only their new tokens."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    @property
    def can_insert(self) -> bool:
        """Whether `insert` can put tokens inside a sequence (its cached KV can move to other positions)."""
        ...

    async def open(self, tokens: Seq[int], parent: Sequence | None = None, *,
                   cache_salt: str | None = None) -> Sequence: ...

    async def append(self, seq: Sequence, tokens: Seq[int]) -> None: ...

    async def insert(self, seq: Sequence, at: int, tokens: Seq[int]) -> None:
        """Put `tokens` at position `at`, the later tokens after them, computing only the new ones (their KV is
        moved, not recomputed); UnsupportedFeatureError where the KV cannot move. An empty insert only checks."""
        ...

    def generate(self, seq: Sequence, sampling: SamplingParams) -> AsyncIterator[TokenDelta]: ...

    async def fork(self, seq: Sequence) -> Sequence: ...

    async def abort(self, seq: Sequence) -> None: ...

    async def close(self, seq: Sequence) -> None: ...

    async def pin(self, seq: Sequence, ttl: float | None = None) -> None:
        """Keep the sequence's KV resident (never evicted) for `ttl` seconds (None: until unpin)."""
        ...

    async def unpin(self, seq: Sequence) -> None:
        """Make a pinned sequence evictable again (it is recomputed transparently if evicted)."""
        ...

    async def score(self, seq: Sequence, tokens: Seq[int]) -> list[float]:
        """Log-probability of each of `tokens` as a continuation of `seq`, leaving `seq` unchanged."""
        ...

    def tokens(self, seq: Sequence) -> list[int]: ...

    def seq_stats(self, seq: Sequence) -> SequenceStats: ...

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None: ...
