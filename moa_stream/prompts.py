"""Prompt templates from the top-level `prompts/` folder (or $MOA_STREAM_PROMPTS)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def prompts_dir() -> Path:
    """The folder holding the templates."""
    override = os.environ.get("MOA_STREAM_PROMPTS")
    if override:
        return Path(override)
    # The top-level `prompts` package sits beside moa_stream in a checkout and in site-packages alike; finding
    # it by path, not by import, keeps an unrelated `prompts` folder on sys.path from shadowing it.
    return Path(__file__).resolve().parent.parent / "prompts"


@cache
def template(name: str) -> str:
    """The text of prompts/<name>.txt without the editor's trailing newline."""
    path = prompts_dir() / f"{name}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt template {path} is missing; reinstall moa-stream") from None
    return text[:-1] if text.endswith("\n") else text


def render(name: str, **fields: object) -> str:
    """Fill a template's {fields}."""
    return template(name).format(**fields)
