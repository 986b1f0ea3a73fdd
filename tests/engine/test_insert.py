"""Engine.insert: tokens placed inside a sequence, its later KV moved (llama.cpp) instead of recomputed.

The llama.cpp engine runs the shipped SmolLM2 GGUF. What an insert promises is checked where it is exact: the new
tokens read only what lies before them and a last token recomputed reads everything, so a sequence whose moved
tail is one token generates what a fresh prefill of the new order generates; the counters show that only the
new tokens were computed; moved KV is never shared as a cached prefix; a tail shared with a fork is recomputed
instead of moved, and the fork is untouched. Engines that cannot move KV refuse with a typed error.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine import SamplingParams
from engine.errors import InvalidTokensError, SequenceBusyError, UnsupportedFeatureError
from tests.conftest import collect

pytestmark = pytest.mark.asyncio

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
async def eng() -> Any:
    """The shipped GGUF on the llama.cpp engine."""
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    e = LlamaCppEngine(kv_cells=2048, n_seq_max=8, max_tokens_per_step=128)
    yield e
    await e.shutdown()


def ids(eng: Any, text: str) -> list[int]:
    return eng.tokenizer.encode(text, add_special_tokens=False)


def close_to(got: list[float], want: list[float]) -> bool:
    """Log-probabilities equal up to llama.cpp's summation order: its CPU attention sums V in f16 in cell order, so
    the same context in other cells moves a log-probability by up to ~0.1 here; wrong KV moves it by nats."""
    return len(got) == len(want) and all(abs(g - w) < 0.3 for g, w in zip(got, want, strict=True))


async def test_a_one_token_tail_reads_like_a_prefill_of_the_new_order(eng: Any) -> None:
    a = ids(eng, "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.")
    b = ids(eng, " The capital of Germany is Berlin. The capital of Japan is Tokyo.")
    c = ids(eng, " The")
    ref = await eng.open(a + b + c)
    probe = await eng.fork(ref)  # generating appends to the sequence: the reference scores from the fork's start
    cont, _, _ = await collect(eng, probe, GREEDY)
    await eng.close(probe)
    want = await eng.score(ref, cont)
    seq = await eng.open(a + c)
    before = eng.seq_stats(seq).prefill_computed
    await eng.insert(seq, len(a), b)
    assert eng.tokens(seq) == a + b + c
    assert eng.seq_stats(seq).prefill_computed - before == len(b)  # the tail was moved, not recomputed
    assert close_to(await eng.score(seq, cont), want)
    first, _, _ = await collect(eng, seq, SamplingParams(max_tokens=4, ignore_eos=True))
    assert first == cont[:4]
    await eng.close(seq)
    await eng.close(ref)


async def test_moved_kv_is_never_served_as_a_cached_prefix(eng: Any) -> None:
    a = ids(eng, "Note one. " * 40)  # several full blocks of 16 before the insert
    b = ids(eng, "Note two. " * 8)
    c = ids(eng, "Note three. " * 20)
    seq = await eng.open(a + c)
    await eng.insert(seq, len(a), b)
    twin = await eng.open(a + b + c + ids(eng, " end"))
    reused = eng.seq_stats(twin).prefill_reused
    # What the twin may share: blocks of a and b (computed as a prefill would), never the moved c.
    assert 0 < reused <= len(a) + len(b)
    assert eng.seq_stats(twin).prefill_computed >= len(c)
    await eng.close(twin)
    await eng.close(seq)


async def test_a_tail_shared_with_a_fork_is_recomputed_and_the_fork_is_untouched(eng: Any) -> None:
    a = ids(eng, "Water boils at one hundred degrees Celsius at sea level.")
    b = ids(eng, " Ice melts at zero degrees.")
    c = ids(eng, " At the top of a high mountain, water boils")
    cont = ids(eng, " at a lower temperature, because the air pressure is lower.")
    seq = await eng.open(a + c)
    fork = await eng.fork(seq)
    want_fork = await eng.score(fork, cont)
    before = eng.seq_stats(seq).prefill_computed
    await eng.insert(seq, len(a), b)
    assert eng.tokens(seq) == a + b + c
    assert eng.seq_stats(seq).prefill_computed - before == len(b) + len(c)
    assert eng.tokens(fork) == a + c
    assert close_to(await eng.score(fork, cont), want_fork)
    fresh = await eng.open(a + b + c)
    assert close_to(await eng.score(seq, cont), await eng.score(fresh, cont))  # recomputed in order: a prefill
    for s in (seq, fork, fresh):
        await eng.close(s)


async def test_bad_inserts_are_refused_and_leave_the_sequence_as_it_was(eng: Any) -> None:
    a = ids(eng, "One two three four.")
    seq = await eng.open(a)
    with pytest.raises(InvalidTokensError, match="outside"):
        await eng.insert(seq, len(a) + 1, a)
    with pytest.raises(InvalidTokensError):
        await eng.insert(seq, 0, [eng.vocab_size + 5])
    await eng.insert(seq, 1, [])  # an empty insert only checks
    assert eng.tokens(seq) == a
    gen = eng.generate(seq, SamplingParams(max_tokens=64, ignore_eos=True))
    await gen.__anext__()
    with pytest.raises(SequenceBusyError):
        await eng.insert(seq, 1, a)
    await gen.aclose()
    await eng.close(seq)


async def test_engines_that_cannot_move_kv_refuse_with_a_typed_error(tiny_engine: Any) -> None:
    seq = await tiny_engine.open([1, 2, 3, 4])
    with pytest.raises(UnsupportedFeatureError, match="cannot insert"):
        await tiny_engine.insert(seq, 1, [5])
    assert tiny_engine.tokens(seq) == [1, 2, 3, 4]
    await tiny_engine.close(seq)
