"""Property (hypothesis): streamed detokenized text equals the full decode at every token boundary."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import models
from engine.detokenizer import Detokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The default model's real tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(None))


_VOCAB = 49152  # SmolLM2's vocabulary (checked below against the tokenizer)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(min_value=0, max_value=_VOCAB - 1), min_size=1, max_size=24))
def test_streamed_text_equals_full_decode_at_every_boundary(tokenizer: Any, ids: list[int]) -> None:
    """At every boundary the streamed text is the full decode so far (minus an unfinished character at its end);
    once the stream ends it is exactly the full decode."""
    assert len(tokenizer) == _VOCAB
    detok = Detokenizer(tokenizer)
    streamed = ""
    for n in range(1, len(ids) + 1):
        out, hit = detok.push(ids[n - 1])
        assert not hit
        streamed += out
        full = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if full.endswith("\ufffd"):
            assert full.startswith(streamed), (ids[:n], streamed, full)
        else:
            assert streamed == full, (ids[:n], streamed, full)
    streamed += detok.flush()
    assert streamed == tokenizer.decode(ids, skip_special_tokens=True)
