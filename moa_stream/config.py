"""MoA configuration: backends, agents, layers and staircase knobs (pydantic, from YAML/TOML/dict)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .events import Mode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    """Where an agent's tokens come from."""

    kind: Literal["transformers", "http", "vllm"] = "transformers"
    model: str | None = Field(None, description="HF id or folder (transformers, vllm); server model name (http)")
    base_url: str | None = Field(None, description="http: server root, e.g. http://127.0.0.1:8080/v1")
    api_key_env: str | None = Field(None, description="http: environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0)
    kv_cache_gb: float | None = Field(None, gt=0, description="transformers: KV budget in GiB")
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific extras")

    @model_validator(mode="after")
    def _needs_url(self) -> BackendConfig:
        if self.kind == "http" and not self.base_url:
            raise ValueError("an http backend needs base_url (e.g. http://127.0.0.1:8080/v1)")
        return self


class AgentConfig(_Strict):
    """One proposer or the aggregator."""

    name: str = Field(min_length=1)
    backend: str = "default"
    system_prompt: str | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None
    ignore_eos: bool = Field(False, description="write max_tokens even past end-of-text (benchmarks)")


class StaircaseConfig(_Strict):
    """When the aggregator starts and how it takes in the proposals."""

    first_chunk_tokens: int = Field(8, ge=1, description="tokens of each proposal before the aggregator starts")
    chunk_tokens: int = Field(32, ge=1, description="tokens per later chunk")
    chunk_growth: float = Field(1.0, ge=1.0, description="each later chunk is this many times the previous")
    max_chunk_tokens: int = Field(256, ge=1)
    start_policy: Literal["all", "quorum", "first"] = "all"
    quorum: int | None = Field(None, ge=1, description="with start_policy=quorum: proposers needed to start")
    aggregator_tokens_per_intake: int = Field(16, ge=1, description="answer tokens between two intakes")
    resume_cue: bool = Field(True, description="repeat the answer's last words after each block")
    pace: bool = Field(False, description="after each step, wait for a new chunk while proposals still stream")
    agent_timeout_s: float = Field(120.0, gt=0, description="a proposer silent this long is dropped")

    @model_validator(mode="after")
    def _quorum(self) -> StaircaseConfig:
        if self.start_policy == "quorum" and self.quorum is None:
            raise ValueError("start_policy 'quorum' needs quorum: <number of proposers>")
        return self

    def with_chunk(self, tokens: int | None, first: int | None = None) -> StaircaseConfig:
        """These knobs with chunks of `tokens` (the first one too, unless `first` is given); None keeps a size.

        The one chunk-size override: it raises max_chunk_tokens so that a large chunk is not capped.
        """
        update: dict[str, int] = {}
        if tokens is not None:
            update |= {"chunk_tokens": tokens, "first_chunk_tokens": tokens,
                       "max_chunk_tokens": max(tokens, self.max_chunk_tokens)}
        if first is not None:
            update["first_chunk_tokens"] = first
        return self.model_copy(update=update)

    def chunk_size(self, index: int) -> int:
        """Size in tokens of chunk number `index` (0 = the first chunk)."""
        if index == 0:
            return self.first_chunk_tokens
        return min(self.max_chunk_tokens, round(self.chunk_tokens * self.chunk_growth ** (index - 1)))


_DEFAULT_PROPOSERS = [
    ("analyst", "You are a careful analyst. Answer accurately and concisely, giving the key facts.", 0.7, 1),
    ("explainer", "You are a patient teacher. Explain the answer step by step in plain words.", 0.8, 2),
    ("skeptic", "You are a skeptical expert. Give the correct answer and point out common mistakes.", 0.9, 3),
]


class MoAConfig(_Strict):
    """The whole pipeline: backends, proposer layers, aggregator, mode and staircase knobs."""

    backends: dict[str, BackendConfig] = Field(default_factory=lambda: {"default": BackendConfig()})
    layers: list[list[AgentConfig]] = Field(min_length=1)
    aggregator: AgentConfig
    mode: Mode = "staircase"
    staircase: StaircaseConfig = Field(default_factory=StaircaseConfig)

    @field_validator("layers")
    @classmethod
    def _non_empty_layers(cls, layers: list[list[AgentConfig]]) -> list[list[AgentConfig]]:
        for i, layer in enumerate(layers):
            if not layer:
                raise ValueError(f"layer {i} has no proposers; every layer needs at least one")
        return layers

    @model_validator(mode="after")
    def _check_refs(self) -> MoAConfig:
        names = [a.name for layer in self.layers for a in layer] + [self.aggregator.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"agent names must be unique; repeated: {dupes}")
        for agent in [*(a for layer in self.layers for a in layer), self.aggregator]:
            if agent.backend not in self.backends:
                raise ValueError(f"agent {agent.name!r} uses backend {agent.backend!r}; defined: "
                                 f"{sorted(self.backends)}")
        q = self.staircase.quorum
        if self.staircase.start_policy == "quorum" and q is not None and q > len(self.layers[-1]):
            raise ValueError(f"staircase.quorum={q} but the last layer has {len(self.layers[-1])} proposers")
        return self

    @classmethod
    def default(cls, model: str | None = None, proposers: int = 3, max_tokens: int = 256) -> MoAConfig:
        """Self-MoA on one model: `proposers` prompts/temperatures, one aggregator."""
        specs = [_DEFAULT_PROPOSERS[i % len(_DEFAULT_PROPOSERS)] for i in range(proposers)]
        agents = [
            AgentConfig(name=name if i < len(_DEFAULT_PROPOSERS) else f"{name}{i}", system_prompt=prompt,
                        temperature=temp, seed=seed + i, max_tokens=max_tokens)
            for i, (name, prompt, temp, seed) in enumerate(specs)
        ]
        return cls(
            backends={"default": BackendConfig(model=model)},
            layers=[agents],
            aggregator=AgentConfig(name="aggregator", temperature=0.0, max_tokens=max_tokens),
        )

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | MoAConfig | None = None) -> MoAConfig:
        """A config from a YAML/TOML file, a dict, an instance, or None for the default."""
        if source is None:
            return cls.default()
        if isinstance(source, MoAConfig):
            return source
        if isinstance(source, dict):
            return cls.parse(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.parse(data, origin=str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], origin: str = "config") -> MoAConfig:
        """Validate a dict; errors name each bad field and what it accepts."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(top level)"
                lines.append(f"{where}: {err['msg']}")
            raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None

    def agents(self) -> list[AgentConfig]:
        """Every agent, proposers first."""
        return [*(a for layer in self.layers for a in layer), self.aggregator]
