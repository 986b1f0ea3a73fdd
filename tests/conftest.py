"""Shared fixtures: one real default-model engine and one tiny random-model engine per test session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from engine import SamplingParams, Sequence, models
from engine.transformers_engine import TransformersEngine
from tests.llama_server import llama_server  # noqa: F401  (session fixture: llama.cpp server on loopback)
from tests.misbehaving_server import MisbehavingServer

GUARD_S = 120  # a hang fails the test instead of blocking the suite; never reached when the engine works


async def collect(eng: TransformersEngine, seq: Sequence, params: SamplingParams) -> tuple[list[int], str, Any]:
    """Run one generation to its end: (token ids, text, finish reason)."""
    ids: list[int] = []
    text = ""
    reason = None

    async def run() -> None:
        nonlocal text, reason
        async for delta in eng.generate(seq, params):
            ids.extend(delta.token_ids)
            text += delta.text
            reason = delta.finish_reason

    await asyncio.wait_for(run(), GUARD_S)
    return ids, text, reason


@dataclass
class ModelPositions:
    """Token positions the model really computed, counted by a hook on its input embedding."""

    count: int = 0


@contextmanager
def count_model_positions(eng: TransformersEngine) -> Iterator[ModelPositions]:
    """Count every token position fed to the engine's model while the block runs (measured at the model).

    A forward pre-hook on the input embedding sees each forward pass's input_ids, so the count is what the
    model computed, independent of the counters the scheduler keeps.
    """
    seen = ModelPositions()

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        seen.count += int(args[0].numel())

    handle = eng.model.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def chat_ids(eng: Any, *turns: str) -> list[int]:
    """Token ids of a chat of alternating user/assistant turns (the engine's template), ready for the assistant."""
    msgs = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    ids = eng.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def tiny_llama(seed: int = 0, vocab: int = 512) -> models.LoadedModel:
    """A 2-layer random Llama built from a config (no download) with the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=vocab - 1, bos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(None))
    return models.LoadedModel(model=model, tokenizer=tokenizer, name="tiny-llama", path="<random>")


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """Folder of the converted default model (converts the shipped GGUF once per machine)."""
    return models.resolve(None)


@pytest.fixture(scope="session")
async def engine(default_model_path: str) -> TransformersEngine:
    """The real default model (SmolLM2-135M-Instruct, fp32, CPU) on one shared engine."""
    eng = TransformersEngine.from_pretrained(default_model_path)
    yield eng
    await eng.shutdown()


@pytest.fixture
async def tiny_engine() -> TransformersEngine:
    """A fresh engine over a tiny random model, for fast KV mechanics tests."""
    eng = TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20)
    yield eng
    await eng.shutdown()


@pytest.fixture(scope="module")
def fake() -> Iterator[MisbehavingServer]:
    """The misbehaving OpenAI-style server on its own thread, one per module (see tests/misbehaving_server.py)."""
    from transformers import AutoTokenizer

    server = MisbehavingServer(AutoTokenizer.from_pretrained(models.resolve(None)))
    server.start()
    yield server
    server.stop()
