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


class _DecodeOnly:
    """The tokenizer without its Rust backend: the Detokenizer then takes its two-window Python fallback."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))


@pytest.mark.parametrize("text", ["Vaccines — antigens, B cells & T cells: déjà vu 🦠 ok.", "a\n\n  b   c\t日本語"])
def test_the_rust_stream_and_the_python_fallback_release_the_same_pieces(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    fast, slow = Detokenizer(tokenizer), Detokenizer(_DecodeOnly(tokenizer))
    assert fast._stream is not None and slow._stream is None
    pieces = [(fast.push(i), slow.push(i)) for i in ids]
    assert all(a == b for a, b in pieces)
    assert fast.flush() == slow.flush()
    assert fast.text == slow.text == tokenizer.decode(ids, skip_special_tokens=True)
