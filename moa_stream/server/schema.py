"""OpenAI's chat completion wire format as pydantic models: the request we read, the responses we write.

Requests keep only the fields the pipeline uses (others are ignored, as OpenAI-compatible servers do). Every
response carries standard `usage` and an extra top-level `moa` object with the pipeline's metrics.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moa_stream import AgentError, AgentMetrics, Metrics, Mode
from moa_stream.config import check_agent_format, check_temperature

from .response_format import ResponseFormat
from .tool_calls import MessageToolCall, ToolChoiceSpec, ToolSpec

# ---------------------------------------------------------------------------------------------- requests

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


class TextPart(BaseModel):
    """One part of a multi-part message content (only text is accepted)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One OpenAI chat message."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # the call a `tool` message answers


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The parts of an OpenAI chat completion request the pipeline uses; fields it cannot honour are refused.

    Fields not named here (`user`, `metadata`, `store`...) change nothing about the answer and are ignored.
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="0 (greedy) or 1e-5 to 2")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass (0 is refused, as vLLM does)")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="the answer's random draws (sampled answers)")
    stop: str | list[str] | None = Field(None, description="up to 16 strings; the answer ends before the first")
    logit_bias: dict[str, float] | None = Field(None, description="token id -> -100 bans the token (other "
                                                "values are refused)")
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None
    stream_options: StreamOptions | None = None
    agent_format: str | None = Field(None, description="moa-stream: the context format of the pipeline's tool-using "
                                     "agents for this request (chat, thread, compact)")
    cache_salt: str | None = Field(None, min_length=1, max_length=256,
                                   description="prefix-cache salt: only requests with the same salt share cached KV")
    response_format: ResponseFormat | None = Field(None, description="text, json_object or json_schema (the answer)")
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoiceSpec | None = None
    parallel_tool_calls: bool | None = None
    # Against loops, for the answer (OpenAI's names and ranges; repetition_penalty and min_p as vLLM takes them):
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="per repeat of a generated token")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="once a token was generated")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="HF: tokens in the context (1 = off)")
    min_p: float | None = Field(None, ge=0, le=1, description="drop tokens below min_p x the top token's probability")

    def aggregator_overrides(self) -> dict[str, float | int]:
        """The aggregator's sampling settings this request sets (temperature, top_p, seed, penalties), by
        AgentConfig name."""
        names = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "repetition_penalty",
                 "min_p")
        return {n: v for n in names if (v := getattr(self, n)) is not None}

    def stop_strings(self) -> tuple[str, ...]:
        """The `stop` strings as a tuple (empty when none)."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} characters")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature_not_tiny(cls, value: float | None) -> float | None:
        return None if value is None else check_temperature(value)

    @field_validator("agent_format")
    @classmethod
    def _known_agent_format(cls, name: str | None) -> str | None:
        return check_agent_format(name)


# ---------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    """OpenAI's token counts: what every agent read as its prompt, and the answer the client gets."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, metrics: Metrics) -> Usage:
        """The usage of one finished turn."""
        prompt = sum(a.prompt_tokens for a in metrics.agents.values())
        return cls(prompt_tokens=prompt, completion_tokens=metrics.answer_tokens,
                   total_tokens=prompt + metrics.answer_tokens)


class MoAInfo(BaseModel):
    """The extra `moa` object: timings, KV reuse, per-agent metrics and agent errors."""

    mode: Mode
    ttft_s: float | None
    total_s: float
    tokens_per_s: float
    answer_tokens: int
    chunks_ingested: int
    prefill_computed: int
    prefill_reused: int
    prefill_saved: int
    aggregator_prefill_computed: int
    aggregator_prefill_reused: int
    decode_tokens: int
    agents: dict[str, AgentMetrics]
    errors: list[AgentError]

    @classmethod
    def of(cls, metrics: Metrics, errors: list[AgentError]) -> MoAInfo:
        """The `moa` object of one finished turn."""
        return cls(mode=metrics.mode, ttft_s=metrics.ttft_s, total_s=metrics.total_s,
                   tokens_per_s=metrics.tokens_per_s, answer_tokens=metrics.answer_tokens,
                   chunks_ingested=metrics.chunks_ingested, prefill_computed=metrics.prefill_computed,
                   prefill_reused=metrics.prefill_reused, prefill_saved=metrics.prefill_saved,
                   aggregator_prefill_computed=metrics.aggregator_prefill_computed,
                   aggregator_prefill_reused=metrics.aggregator_prefill_reused,
                   decode_tokens=metrics.decode_tokens, agents=metrics.agents, errors=errors)


class AssistantMessage(BaseModel):
    """The answer as an assistant message: its text, and the calls it makes when tools were offered."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[MessageToolCall] | None = None


class Choice(BaseModel):
    """The one choice of a non-streamed answer."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A whole answer: `chat.completion`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    moa: MoAInfo


class ChunkChoice(BaseModel):
    """The one choice of a streamed chunk: a delta of the answer, and the finish reason on the last one."""

    index: int = 0
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One streamed piece: `chat.completion.chunk`; the last one also carries usage and the `moa` object."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    moa: MoAInfo | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON object; `usage` and `moa` appear only on the chunk that carries them."""
        return self.model_dump(mode="json", exclude={k for k in ("usage", "moa") if getattr(self, k) is None})


def sse(obj: BaseModel | dict[str, Any] | str) -> str:
    """One server-sent event carrying a model, a JSON object or a bare marker such as `[DONE]`."""
    if isinstance(obj, ChatCompletionChunk):
        obj = obj.payload()
    elif isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    # json.dumps' spacing ("key": value) is what clients have seen from us; keep it.
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
