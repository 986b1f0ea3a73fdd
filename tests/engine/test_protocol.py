"""Every engine meets the whole Engine protocol (abort, vocab_size and model_name included), and engine ids
come from one counter, so a handle of one engine is refused by every other."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from engine import Engine, Sequence, UnknownSequenceError, models
from engine.remote.http_engine import HttpEngine
from engine.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The SmolLM2 tokenizer."""
    return AutoTokenizer.from_pretrained(models.resolve(None))


async def test_local_and_remote_engines_meet_the_protocol(tiny_engine: TransformersEngine, tokenizer: Any) -> None:
    remote = HttpEngine("http://127.0.0.1:9/v1", "served-model", tokenizer=tokenizer)  # never contacted
    try:
        for eng in (tiny_engine, remote):
            assert isinstance(eng, Engine)
            assert eng.vocab_size > 0 and eng.model_name
        assert tiny_engine.vocab_size == 512 and tiny_engine.model_name == "tiny-llama"
        assert remote.vocab_size == len(tokenizer) and remote.model_name == "served-model"
        assert tiny_engine.id != remote.id
        local = await tiny_engine.open([1, 2, 3])
        other = await remote.open([1, 2, 3])
        with pytest.raises(UnknownSequenceError, match="another engine"):
            remote.tokens(Sequence(local.id, local.engine_id))
        with pytest.raises(UnknownSequenceError, match="another engine"):
            tiny_engine.tokens(Sequence(other.id, other.engine_id))
        await tiny_engine.abort(local)  # idle: a no-op on both
        await remote.abort(other)
        assert tiny_engine.tokens(local) == remote.tokens(other) == [1, 2, 3]
        await tiny_engine.close(local)
        await remote.close(other)
    finally:
        await remote.shutdown()
