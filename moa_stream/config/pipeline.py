"""The whole pipeline: proposer layers, aggregator, mode, staircase and debate knobs; loading from YAML/TOML/dict."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError
from ..events import Mode
from .agents import AgentConfig, ToolCacheConfig
from .backends import BackendConfig, default_backend
from .base import Strict

StartPolicy = Literal["all", "quorum", "first", "at_once"]
SIMPLE_START_POLICIES: tuple[str, ...] = tuple(p for p in get_args(StartPolicy) if p != "quorum")
"""The start policies a command line can switch to by name (`quorum` needs its count too)."""


class StaircaseConfig(Strict):
    """When the aggregator starts and how it takes in the proposals."""

    first_chunk_tokens: int = Field(8, ge=1, description="tokens of each proposal before the aggregator starts")
    chunk_tokens: int = Field(32, ge=1, description="tokens per later chunk")
    chunk_growth: float = Field(1.0, ge=1.0, description="each later chunk is this many times the previous")
    max_chunk_tokens: int = Field(256, ge=1)
    start_policy: StartPolicy = Field(
        "all", description="when a reader starts: once every proposer (all), `quorum` of them or the first (first) "
        "has a first chunk, or at once on the question alone (at_once: the answer's first token comes before the "
        "proposers' prompts are read, as early as one model's; each chunk is read as it arrives)")
    quorum: int | None = Field(None, ge=1, description="with start_policy=quorum: proposers needed to start")
    aggregator_tokens_per_intake: int = Field(16, ge=1, description="answer tokens between two intakes")
    resume_cue: bool = Field(True, description="append-only layouts: repeat the answer's last words after "
                             "each intake (after a block; at the start of the next assistant turn)")
    read_every_proposal: bool = Field(True, description="interleaved layout: after an EOS, wait for the chunks "
                                      "still to come and let the aggregator go on (False: an EOS with nothing "
                                      "pending ends the answer)")
    pace: bool = Field(False, description="after each step, wait for a new chunk while proposals still stream")
    proposer_lead_chunks: int | None = Field(1, ge=1, description="while the aggregator answers (served first), a "
                                             "proposer with this many chunks written that the aggregator has not "
                                             "taken in waits before writing more (null: never held)")
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


class DebateConfig(Strict):
    """Multi-agent debate (modes `debate` and `debate-sequential`): the agents answer, then revise over rounds."""

    rounds: int = Field(2, ge=1, le=16, description="rounds of answers: the first answers, then rounds - 1 revisions")
    agents: list[AgentConfig] | None = Field(None, description="the debaters (default: the first proposer layer)")
    final: Literal["aggregator", "last-round"] = Field("aggregator", description="the answer: the aggregator over "
                                                       "the last round, or one agent's last-round answer")
    final_agent: str | None = Field(None, description="final=last-round: whose answer (default: the first agent)")

    @model_validator(mode="after")
    def _final(self) -> DebateConfig:
        if self.final == "last-round" and self.rounds < 2:
            raise ValueError("final 'last-round' needs rounds >= 2 (a round of answers, then one of revisions)")
        return self


_DEFAULT_PROPOSERS = [
    ("analyst", "You are a careful analyst. Answer accurately and concisely, giving the key facts.", 0.7, 1),
    ("explainer", "You are a patient teacher. Explain the answer step by step in plain words.", 0.8, 2),
    ("skeptic", "You are a skeptical expert. Give the correct answer and point out common mistakes.", 0.9, 3),
]


class MoAConfig(Strict):
    """The whole pipeline: backends, proposer layers, aggregator, mode and staircase knobs."""

    backends: dict[str, BackendConfig] = Field(
        default_factory=lambda: {"default": default_backend()})
    layers: list[list[AgentConfig]] = Field(min_length=1)
    aggregator: AgentConfig
    mode: Mode = "staircase"
    layer_modes: list[str] | None = Field(None, description="how proposer layers 1.. read the layer before them, "
                                          "one mode each (default: `mode`; classic waits for the whole layer)")
    staircase: StaircaseConfig = Field(default_factory=StaircaseConfig)
    debate: DebateConfig = Field(default_factory=DebateConfig)

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
            for backend in (agent.backend, agent.speculation.draft_backend):
                if backend is not None and backend not in self.backends:
                    raise ValueError(f"agent {agent.name!r} uses backend {backend!r}; defined: "
                                     f"{sorted(self.backends)}")
        if self.aggregator.tools:
            raise ValueError("aggregator.tools: only proposers may have tools (their calls and results reach the "
                             "aggregator as chunks); move them to a proposer")
        if self.layer_modes is not None and len(self.layer_modes) != len(self.layers) - 1:
            raise ValueError(f"layer_modes has {len(self.layer_modes)} modes but layers 1..{len(self.layers) - 1} "
                             f"need {len(self.layers) - 1} (one per proposer layer after the first)")
        debaters = [a.name for a in self.debaters()]
        if len(set(debaters)) != len(debaters) or self.aggregator.name in debaters:
            raise ValueError(f"debate agents need names unique among them and apart from the aggregator's: {debaters}")
        if self.debate.final_agent is not None and self.debate.final_agent not in debaters:
            raise ValueError(f"debate.final_agent {self.debate.final_agent!r} is not a debate agent: {debaters}")
        for agent in self.debate.agents or ():
            if agent.backend not in self.backends:
                raise ValueError(f"debate agent {agent.name!r} uses backend {agent.backend!r}; defined: "
                                 f"{sorted(self.backends)}")
        q = self.staircase.quorum
        if self.staircase.start_policy == "quorum" and q is not None and q > len(self.layers[-1]):
            raise ValueError(f"staircase.quorum={q} but the last layer has {len(self.layers[-1])} proposers")
        return self

    def with_tool_agents(self, *, format: str | None = None, tool_cache: ToolCacheConfig | None = None,
                         override: bool = False) -> MoAConfig:
        """This config with its tool-using proposers' context format and tool cache set: where they set none, or
        everywhere with `override` (a server's defaults, a request's choice)."""
        def updated(agent: AgentConfig) -> AgentConfig:
            if not agent.tools:
                return agent
            changes: dict[str, object] = {}
            if format is not None and (override or agent.format is None):
                changes["format"] = format
            if tool_cache is not None and (override or agent.tool_cache is None):
                changes["tool_cache"] = tool_cache
            return agent.model_copy(update=changes) if changes else agent

        layers = [[updated(a) for a in layer] for layer in self.layers]
        return self if layers == self.layers else self.model_copy(update={"layers": layers})

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
            backends={"default": default_backend(model)},
            layers=[agents],
            # Greedy, with HF's repetition penalty over its whole context: measured on SmolLM2-135M (issue 10), a
            # greedy aggregator loops once its context repeats itself, and 1.1 stops that without leaving the
            # proposals' wording (frequency/presence penalties count one generate call only: a staircase answer
            # is several, so they cannot see a loop across intakes).
            aggregator=AgentConfig(name="aggregator", temperature=0.0, repetition_penalty=1.1, max_tokens=max_tokens),
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
                msg = "unknown field: check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
                lines.append(f"{where}: {msg}")
            raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None

    def agents(self) -> list[AgentConfig]:
        """Every agent, proposers first (debate agents of their own among them)."""
        return [*(a for layer in self.layers for a in layer), *(self.debate.agents or ()), self.aggregator]

    def debaters(self) -> list[AgentConfig]:
        """The agents of a debate: `debate.agents`, or the first proposer layer."""
        return self.debate.agents or self.layers[0]

    def model_label(self, agent: AgentConfig) -> str:
        """The model `agent` runs on, as a panel shows it."""
        return self.backends[agent.backend].model_label()
