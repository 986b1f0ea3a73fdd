"""Typed events a MoA run streams, and the metrics it ends with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

# `staircase` is the default staircase mode: an alias of the best append-only layout (see moa_stream/moa/layouts).
# The debate modes are pipeline shapes, not layouts: agents answer, then revise over rounds (moa_stream/moa/debate.py).
Mode = Literal["single", "classic", "staircase-reprefill", "staircase", "blocks", "interleaved", "debate",
               "debate-sequential"]
LAYOUT_MODES: tuple[Mode, ...] = ("single", "classic", "staircase-reprefill", "staircase", "blocks", "interleaved")
DEBATE_MODES: tuple[Mode, ...] = ("debate", "debate-sequential")
MODES: tuple[Mode, ...] = (*LAYOUT_MODES, *DEBATE_MODES)


class AgentMetrics(BaseModel):
    """What one agent did in one turn."""

    role: Literal["proposer", "aggregator"]
    layer: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_computed: int = 0
    prefill_reused: int = 0
    decode_tokens: int = 0
    context_tokens: int = 0  # length of the agent's context at the end of the turn (0 once freed)
    finish_reason: str | None = None
    error: str | None = None


class Metrics(BaseModel):
    """A turn's timings and token accounting (the JSON that benches, the server and the eval report)."""

    mode: str  # one of MODES (a debate mode, or the aggregator layout's name), or a layout registered by a user
    ttft_s: float | None = None
    total_s: float = 0.0
    answer_tokens: int = 0
    chunks_ingested: int = 0
    aggregator_prefill_computed: int = 0
    aggregator_prefill_reused: int = 0
    prefill_computed: int = 0
    prefill_reused: int = 0
    decode_tokens: int = 0
    agents: dict[str, AgentMetrics] = Field(default_factory=dict)
    # Events an MQTT publisher dropped because a broker outage outlasted its buffer (set on the Done it publishes).
    bus_events_dropped: int = 0
    # The proposers' throttle while the answer was written (moa_stream/moa/pacing.py): how often one waited, and the
    # most chunks one had written beyond the aggregator's intake.
    proposer_holds: int = 0
    proposer_max_lead_chunks: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Answer tokens per second after the first token."""
        if self.ttft_s is None or self.total_s <= self.ttft_s or self.answer_tokens < 2:
            return 0.0
        return (self.answer_tokens - 1) / (self.total_s - self.ttft_s)

    @property
    def prefill_saved(self) -> int:
        """Prompt tokens served from KV the engine already held instead of being computed again.

        Per agent: prefix-cache hits (`prefill_reused`) plus the part of its final context that this turn did
        not compute at all (an earlier turn's live sequence, extended in place).
        """
        saved = 0
        for a in self.agents.values():
            carried = a.context_tokens - a.prefill_computed - a.prefill_reused - a.decode_tokens
            saved += a.prefill_reused + max(0, carried)
        return saved


@dataclass(frozen=True)
class ProposerDelta:
    """New text from a proposer (layer, agent name), at t seconds since the turn began.

    In a debate the layer is the round (0: the first answers) and an agent's name in round k >= 2 is `name@k`."""

    agent: str
    layer: int
    text: str
    t: float


@dataclass(frozen=True)
class ChunkIngested:
    """A reader (the aggregator, or a proposer of the next layer) took in a chunk of a proposal.

    `agent` and `layer` name the proposal; `reader` names who read it (empty in events from older peers)."""

    agent: str
    layer: int
    index: int
    tokens: int
    t: float
    final: bool = False
    reader: str = ""


@dataclass(frozen=True)
class AggregatorDelta:
    """New answer text."""

    text: str
    t: float


@dataclass(frozen=True)
class FirstToken:
    """The first answer token is out: its time to first token."""

    ttft_s: float


@dataclass(frozen=True)
class AgentError:
    """An agent failed or stalled; the others go on."""

    agent: str
    layer: int
    error: str
    kind: Literal["exception", "timeout", "empty"] = "exception"


@dataclass(frozen=True)
class Done:
    """The turn is over: the whole answer and its metrics."""

    answer: str
    metrics: Metrics


Event = ProposerDelta | ChunkIngested | AggregatorDelta | FirstToken | AgentError | Done


@dataclass(frozen=True)
class RunResult:
    """What `MoA.run` returns."""

    answer: str
    metrics: Metrics
    errors: tuple[AgentError, ...] = ()
