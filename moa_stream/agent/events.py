"""Typed events a tool-using agent streams, step by step, and the metrics its run ends with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from ..tools.calls import ToolCall, ToolResult

AgentFinish = Literal["answer", "max_steps", "length", "tool_calls"]
"""Why a run ended: a reply without calls, the step limit, the token limit, or calls left for the caller."""


class StepMetrics(BaseModel):
    """One step: append the last results (or the user turn), generate, run the calls."""

    step: int
    ttft_s: float | None = None  # from the step's start (its append included) to its first token
    generate_s: float = 0.0  # append + generation
    tools_s: float = 0.0  # wall time running this step's calls (they run concurrently)
    prefill_computed: int = 0  # tokens the step's append computed (Δ when the sequence stayed resident)
    prefill_reused: int = 0
    decode_tokens: int = 0
    calls: int = 0
    tool_errors: int = 0
    cached: int = 0
    speculated: int = 0  # calls answered by a speculative start (exact canonical match)
    tool_time_hidden_s: float = 0.0  # tool time that ran before the model finished asking for it
    context_tokens: int = 0  # the sequence's length when the step ended
    finish_reason: str | None = None


class AgentRunMetrics(BaseModel):
    """A run (one user turn and every step it took)."""

    agent: str = "agent"
    ttft_s: float | None = None
    total_s: float = 0.0
    tools_s: float = 0.0
    prefill_computed: int = 0
    prefill_reused: int = 0
    decode_tokens: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    finish: AgentFinish = "answer"
    tool_cache_hits: int = 0  # calls answered from the tool cache without running
    speculations_started: int = 0
    speculations_taken: int = 0  # alpha = taken / started
    steps: list[StepMetrics] = Field(default_factory=list)


@dataclass(frozen=True)
class AgentDelta:
    """New text from the agent (calls included, as the model writes them)."""

    text: str
    step: int
    agent: str = "agent"


@dataclass(frozen=True)
class StepDone:
    """A step is over: its calls ran and their results were appended (or it was the last step)."""

    metrics: StepMetrics
    agent: str = "agent"


@dataclass(frozen=True)
class AgentDone:
    """The run is over: the final reply (calls stripped), every call and result, and the metrics."""

    answer: str
    metrics: AgentRunMetrics
    calls: tuple[ToolCall, ...] = ()
    results: tuple[ToolResult, ...] = ()
    agent: str = "agent"


AgentEvent = AgentDelta | ToolCall | ToolResult | StepDone | AgentDone
