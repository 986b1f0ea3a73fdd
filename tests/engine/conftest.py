"""Fixtures of the engine tests: the tiny model's reference, run by transformers itself."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def ref_model() -> Any:
    """The same tiny random weights as tiny_engine's model, left with transformers' own attention."""
    model = tiny_llama().model
    model.set_attn_implementation("sdpa")
    model.generation_config.eos_token_id = None  # the engine side runs with ignore_eos
    return model
