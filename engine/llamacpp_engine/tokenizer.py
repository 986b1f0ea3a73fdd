"""The Hugging Face tokenizer of a GGUF model, read from the GGUF once and kept in the cache folder.

transformers reads a GGUF's vocabulary, merges and chat template without touching its weights; that takes
seconds, so the result is saved under the cache folder and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import models
from ..errors import ModelLoadError


def load_tokenizer(gguf: Path, name: str | None = None) -> Any:
    """The tokenizer named (an HF id or folder), or the one inside the GGUF file."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if name is not None:
        try:
            return AutoTokenizer.from_pretrained(name)
        except OSError as exc:
            raise ModelLoadError(f"could not load tokenizer {name!r}: {str(exc).splitlines()[0]}") from exc
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = models.cache_dir() / "tokenizers" / f"{gguf.stem}-{tag}"
    if (target / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(target))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for an unreadable GGUF; one line is what helps
        raise ModelLoadError(f"could not read the tokenizer of {gguf}: {exc}; pass tokenizer=<HF id or folder>") \
            from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a concurrent or interrupted save never leaves half a folder.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".save-"))
    try:
        tok.save_pretrained(tmp)
        if not target.exists():
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tok
