"""One agent's settings: its backend, prompt, sampling, tools, tool cache and speculation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from engine import SamplingParams

from .base import Strict

MIN_TEMPERATURE = 1e-5
"""The smallest positive temperature: below it logits / temperature overflow to inf. 0 means greedy."""


def check_temperature(value: float) -> float:
    """`value` if it is 0 (greedy) or at least MIN_TEMPERATURE; a ValueError saying so otherwise."""
    if 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {value:g}")
    return value


class SpeculationConfig(Strict):
    """Speculative tool calls of an agent with tools: pure tools only, an early result taken on an exact match."""

    stream_start: bool = Field(False, description="start a call the moment the streamed text parses as one")
    predict: Literal["off", "history", "draft"] = Field("off", description="start a guessed call while the step "
                                                        "decodes: history (calls seen in earlier runs) or draft "
                                                        "(a short greedy draft of the call)")
    draft_backend: str | None = Field(None, description="predict=draft: the backend that drafts (default: the "
                                      "agent's own, drafting on a fork of its sequence)")
    draft_max_tokens: int = Field(48, ge=1, le=1024, description="predict=draft: the draft's token budget")


def check_agent_format(name: str | None) -> str | None:
    """`name` if it is a registered agent context format (or None); ValueError naming the choices otherwise."""
    from ..agent.formats import AGENT_FORMATS  # the registry lives with the formats, above the config

    if name is not None and name not in AGENT_FORMATS:
        raise ValueError(f"must be one of {', '.join(AGENT_FORMATS)}; got {name!r}")
    return name


class ToolCacheConfig(Strict):
    """Results of pure tools kept by (tool, canonical arguments), so that a repeated call is answered at once."""

    entries: int = Field(1024, ge=1, description="most results kept (least recently used dropped first)")
    ttl_s: float | None = Field(600.0, gt=0, description="seconds a result stays valid (null: until dropped)")


class AgentConfig(Strict):
    """One proposer or the aggregator."""

    name: str = Field(min_length=1)
    backend: str = "default"
    system_prompt: str | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    min_p: float = Field(0.0, ge=0, le=1, description="drop tokens below min_p x the top token's probability")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="HF/llama.cpp: tokens already in the context "
                                      "(1 = off)")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI: per repeat of a generated token")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI: once a token was generated")
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None
    banned_token_ids: list[int] = Field(default_factory=list, description="token ids never sampled (OpenAI's "
                                        "logit_bias of -100)")
    ignore_eos: bool = Field(False, description="write max_tokens even past end-of-text (benchmarks)")
    tools: list[str] = Field(default_factory=list, description="proposers: tool specs (bfcl:GorillaFileSystem, "
                             "package.module:function); the proposer runs its own tool loop")
    tool_choice: Literal["auto", "required"] = Field("auto", description="proposers with tools: required makes "
                                                     "the turn's first step a call (later steps choose freely)")
    max_tool_steps: int = Field(4, ge=1, description="proposers with tools: most generate-and-call steps per turn")
    tool_timeout_s: float = Field(30.0, gt=0, description="proposers with tools: a call running longer fails")
    speculation: SpeculationConfig = Field(default_factory=SpeculationConfig,
                                           description="proposers with tools: speculative tool calls")
    tool_cache: ToolCacheConfig | None = Field(None, description="proposers with tools: answer repeated pure "
                                               "calls from a cache kept across turns (null: off)")
    format: str | None = Field(None, description="agents with tools: the context format (chat, thread, compact: "
                               "an event log, each step on a fork); null: the conversation's chat messages")

    @field_validator("tools")
    @classmethod
    def _tool_specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            if not isinstance(spec, str) or not (spec.startswith("bfcl:") or ":" in spec or spec.isidentifier()):
                raise ValueError(f"tool spec {spec!r}: write bfcl:<Class> or <module>:<function>")
        return specs

    @field_validator("format")
    @classmethod
    def _known_format(cls, name: str | None) -> str | None:
        return check_agent_format(name)

    @field_validator("temperature")
    @classmethod
    def _temperature_not_tiny(cls, value: float) -> float:
        return check_temperature(value)

    def sampling(self, max_tokens: int | None = None) -> SamplingParams:
        """The engine's SamplingParams for this agent (max_tokens: the config's unless given)."""
        return SamplingParams(max_tokens=max_tokens or self.max_tokens, temperature=self.temperature,
                              top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              seed=self.seed, ignore_eos=self.ignore_eos, banned_token_ids=tuple(self.banned_token_ids))
