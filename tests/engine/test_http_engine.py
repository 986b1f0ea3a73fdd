"""HttpEngine against real servers on loopback: llama.cpp's server (real model) and a server that misbehaves on
purpose (refusals, 500s, cut streams, stalls); plus MoA runs whose proposers live on the llama.cpp server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from transformers import AutoTokenizer

from engine import (
    BackendError,
    InvalidTokensError,
    SamplingParams,
    SequenceBusyError,
    SequenceClosedError,
    TokenDelta,
    models,
)
from engine.remote.http_engine import HttpEngine, TextToIds, chat_messages
from tests.llama_server import LlamaServer, free_port
from tests.misbehaving_server import WORDS, MisbehavingServer

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The SmolLM2 tokenizer (the model both servers stand for)."""
    return AutoTokenizer.from_pretrained(models.resolve(None))


@pytest.fixture
async def make_engine(tokenizer: Any) -> AsyncIterator[Any]:
    """Builds HttpEngines that are shut down after the test."""
    built: list[HttpEngine] = []

    def make(url: str, **kw: Any) -> HttpEngine:
        kw.setdefault("tokenizer", tokenizer)
        kw.setdefault("backoff_s", 0.01)
        eng = HttpEngine(url, kw.pop("model", None), **kw)
        built.append(eng)
        return eng

    yield make
    for eng in built:
        await eng.shutdown()


def chat_prompt(tokenizer: Any, question: str = QUESTION) -> list[int]:
    """Chat-templated token ids of one user question, ending with the assistant header."""
    out = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


async def collect(gen: AsyncIterator[TokenDelta]) -> list[TokenDelta]:
    """Every delta of a generation."""
    return [d async for d in gen]


def text_of(deltas: list[TokenDelta]) -> str:
    """The generated text of a list of deltas."""
    return "".join(d.text for d in deltas)


def ids_of(deltas: list[TokenDelta]) -> list[int]:
    """The generated token ids of a list of deltas."""
    return [t for d in deltas for t in d.token_ids]


# ------------------------------------------------------------------------------------------ pure helpers


def test_text_to_ids_round_trips_streamed_text_exactly(tokenizer: Any) -> None:
    text = "Paris, the city of light: naïve café 東京 emoji 🙂 and   spaces"
    conv = TextToIds(tokenizer)
    ids: list[int] = []
    for i in range(0, len(text), 3):  # pieces that split words and multi-byte characters
        ids += conv.push(text[i:i + 3])
    ids += conv.push("", final=True)
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_chatml_history_becomes_messages(tokenizer: Any) -> None:
    prompt = tokenizer.decode(chat_prompt(tokenizer))
    messages, partial = chat_messages(prompt)
    assert [m["role"] for m in messages][-1] == "user" and messages[-1]["content"] == QUESTION
    assert not partial
    messages, partial = chat_messages(prompt + "It is Par")
    assert partial and messages[-1] == {"role": "assistant", "content": "It is Par"}


# ------------------------------------------------------------------------------------------ protocol, fake server


async def test_token_prompts_stream_server_ids_and_cached_counts(fake: MisbehavingServer, make_engine: Any,
                                                                 tokenizer: Any) -> None:
    """vLLM-style server: token-id prompt, generated ids from the server, cached tokens from usage."""
    eng = make_engine(fake.url("ok"))
    prompt = chat_prompt(tokenizer)
    seq = await eng.open(prompt)
    deltas = await collect(eng.generate(seq, SamplingParams(max_tokens=6)))
    body = fake.state.requests[-1].body
    assert body["prompt"] == prompt and body["return_token_ids"] is True and body["model"] == "fake-smollm2"
    assert text_of(deltas) == " ".join(WORDS[:6])
    assert deltas[-1].finish_reason == "length"
    assert eng.tokens(seq) == prompt + ids_of(deltas)
    cached = (len(prompt) - 16) // 16 * 16  # what the fake server reports
    st = eng.seq_stats(seq)
    assert (st.prefill_reused, st.prefill_computed, st.decode_tokens) == (cached, len(prompt) - cached, 6)
    assert eng.http.cache_reported and eng.http.api == "tokens"
    await eng.close(seq)


async def test_every_request_extends_the_previous_one(fake: MisbehavingServer, make_engine: Any,
                                                      tokenizer: Any) -> None:
    """Append-only histories: the second prompt starts with the first prompt plus its answer."""
    eng = make_engine(fake.url("ok"))
    seq = await eng.open(chat_prompt(tokenizer))
    first = await collect(eng.generate(seq, SamplingParams(max_tokens=4)))
    assert first[-1].finish_reason == "length"
    before = eng.tokens(seq)
    more = tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd Spain?<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False)
    await eng.append(seq, more)
    await collect(eng.generate(seq, SamplingParams(max_tokens=4)))
    assert fake.state.requests[-1].body["prompt"] == before + more
    child = await eng.fork(seq)
    assert eng.tokens(child) == eng.tokens(seq)
    await eng.close(child)
    await eng.close(seq)


async def test_text_prompts_when_token_ids_are_refused(fake: MisbehavingServer, make_engine: Any,
                                                       tokenizer: Any) -> None:
    """llama-cpp-python-style server: a token-id prompt is refused, so the history goes as text."""
    eng = make_engine(fake.url("text-only"))
    prompt = chat_prompt(tokenizer)
    seq = await eng.open(prompt)
    deltas = await collect(eng.generate(seq, SamplingParams(max_tokens=5)))
    sent = fake.state.requests[-1].body["prompt"]
    assert isinstance(sent, str) and sent == tokenizer.decode(prompt)
    assert eng.http.api == "text" and eng.http.fallbacks == 1
    generated = eng.tokens(seq)[len(prompt):]
    assert tokenizer.decode(generated) == text_of(deltas) == " ".join(WORDS[:5])
    assert len(ids_of(deltas)) == len(generated)
    # The format is remembered: the next request goes as text at once.
    n = len(fake.state.requests)
    await collect(eng.generate(seq, SamplingParams(max_tokens=2)))
    assert len(fake.state.requests) == n + 1
    await eng.close(seq)


async def test_chat_completions_when_completions_are_missing(fake: MisbehavingServer, make_engine: Any,
                                                             tokenizer: Any) -> None:
    eng = make_engine(fake.url("chat-only"))
    seq = await eng.open(chat_prompt(tokenizer))
    deltas = await collect(eng.generate(seq, SamplingParams(max_tokens=3)))
    rec = fake.state.requests[-1]
    assert rec.path == "chat/completions" and rec.body["messages"][-1] == {"role": "user", "content": QUESTION}
    assert text_of(deltas) == " ".join(WORDS[:3]) and eng.http.api == "chat"
    await eng.close(seq)


async def test_stop_strings_are_matched_on_the_client(fake: MisbehavingServer, make_engine: Any,
                                                      tokenizer: Any) -> None:
    eng = make_engine(fake.url("ok"))
    prompt = chat_prompt(tokenizer)
    seq = await eng.open(prompt)
    deltas = await collect(eng.generate(seq, SamplingParams(max_tokens=12, stop=("blue",))))
    assert "stop" not in fake.state.requests[-1].body
    assert text_of(deltas) == "The sky looks " and deltas[-1].finish_reason == "stop"
    assert tokenizer.decode(eng.tokens(seq)[len(prompt):]) == "The sky looks "
    # A stop string across two server tokens: the token already taken in is replaced by the text's own ids.
    seq2 = await eng.open(prompt)
    deltas = await collect(eng.generate(seq2, SamplingParams(max_tokens=12, stop=("ky lo",))))
    assert text_of(deltas) == "The s"
    assert tokenizer.decode(eng.tokens(seq2)[len(prompt):]) == "The s"
    await eng.close(seq)
    await eng.close(seq2)


async def test_breaking_out_cancels_and_frees_the_sequence(fake: MisbehavingServer, make_engine: Any,
                                                           tokenizer: Any) -> None:
    eng = make_engine(fake.url("ok"))
    seq = await eng.open(chat_prompt(tokenizer))
    gen = eng.generate(seq, SamplingParams(max_tokens=50))
    with pytest.raises(SequenceBusyError):
        eng.generate(seq)
    async for _ in gen:
        break
    await gen.aclose()
    deltas = await collect(eng.generate(seq, SamplingParams(max_tokens=2)))  # not busy any more
    assert deltas[-1].finish_reason == "length"
    await eng.close(seq)


async def test_closing_a_generating_sequence_ends_its_stream(fake: MisbehavingServer, make_engine: Any,
                                                             tokenizer: Any) -> None:
    """A stalled stream is cut by close(): the consumer gets an abort instead of hanging."""
    eng = make_engine(fake.url("stall"), timeout_s=60)
    seq = await eng.open(chat_prompt(tokenizer))
    gen = eng.generate(seq, SamplingParams(max_tokens=5))
    first = await anext(gen)
    assert first.text == WORDS[0] or first.token_ids
    rest = asyncio.ensure_future(collect(gen))
    await eng.close(seq)
    deltas = await asyncio.wait_for(rest, 10)
    assert deltas[-1].finish_reason == "abort"
    with pytest.raises(SequenceClosedError):
        eng.tokens(seq)


# ------------------------------------------------------------------------------------------ failures, fake server


async def test_refused_connection_fails_cleanly_after_retries(make_engine: Any, tokenizer: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    eng = make_engine(url, model="m", max_retries=2)
    seq = await eng.open(chat_prompt(tokenizer))
    with pytest.raises(BackendError, match=r"127\.0\.0\.1.*cannot connect.*after 3 attempts"):
        await collect(eng.generate(seq))
    assert eng.http.retries == 2
    with pytest.raises(BackendError):  # the sequence is usable again (not stuck busy)
        await collect(eng.generate(seq))
    await eng.close(seq)


async def test_server_error_is_retried_then_reported(fake: MisbehavingServer, make_engine: Any,
                                                     tokenizer: Any) -> None:
    eng = make_engine(fake.url("fail500"), api="tokens", max_retries=2)
    seq = await eng.open(chat_prompt(tokenizer))
    before = fake.state.hits["fail500:"]
    with pytest.raises(BackendError, match=r"/fail500/v1/completions: HTTP 500 after 3 attempts: internal error"):
        await collect(eng.generate(seq))
    assert fake.state.hits["fail500:"] - before == 3
    await eng.close(seq)


async def test_busy_server_is_retried_until_it_answers(fake: MisbehavingServer, make_engine: Any,
                                                       tokenizer: Any) -> None:
    eng = make_engine(fake.url("flaky"), api="tokens", max_retries=3, extra_body={"user": "flaky-1"})
    seq = await eng.open(chat_prompt(tokenizer))
    deltas = await collect(eng.generate(seq, SamplingParams(max_tokens=3)))
    assert text_of(deltas) == " ".join(WORDS[:3])
    assert fake.state.hits["flaky:flaky-1"] == 3 and eng.http.retries == 2
    await eng.close(seq)


async def test_stream_cut_midway_is_an_error_and_not_retried(fake: MisbehavingServer, make_engine: Any,
                                                             tokenizer: Any) -> None:
    eng = make_engine(fake.url("cut"), extra_body={"user": "cut-1"})
    seq = await eng.open(chat_prompt(tokenizer))
    got: list[TokenDelta] = []
    with pytest.raises(BackendError, match=r"/cut/v1/completions: the stream was cut mid-way"):
        async for d in eng.generate(seq, SamplingParams(max_tokens=10)):
            got.append(d)
    assert text_of(got).startswith(WORDS[0])  # what came before the cut was delivered
    assert fake.state.hits["cut:cut-1"] == 1  # after the first byte nothing is retried
    await eng.close(seq)


async def test_stall_past_the_timeout_fails_cleanly(fake: MisbehavingServer, make_engine: Any,
                                                    tokenizer: Any) -> None:
    eng = make_engine(fake.url("stall"), timeout_s=0.5)
    seq = await eng.open(chat_prompt(tokenizer))
    with pytest.raises(BackendError, match=r"/stall/v1/completions: the stream stalled: no data for 0.5 s"):
        await collect(eng.generate(seq, SamplingParams(max_tokens=10)))
    await eng.close(seq)


async def test_no_answer_past_the_timeout_fails_cleanly(fake: MisbehavingServer, make_engine: Any,
                                                        tokenizer: Any) -> None:
    eng = make_engine(fake.url("stall-headers"), timeout_s=0.5)
    seq = await eng.open(chat_prompt(tokenizer))
    with pytest.raises(BackendError, match=r"stall-headers/v1/completions: no response within 0.5 s"):
        await collect(eng.generate(seq))
    await eng.close(seq)


async def test_error_event_and_missing_finish_are_errors(fake: MisbehavingServer, make_engine: Any,
                                                         tokenizer: Any) -> None:
    eng = make_engine(fake.url("error-event"))
    seq = await eng.open(chat_prompt(tokenizer))
    with pytest.raises(BackendError, match="error mid-stream: CUDA out of memory"):
        await collect(eng.generate(seq))
    eng2 = make_engine(fake.url("no-finish"))
    seq2 = await eng2.open(chat_prompt(tokenizer))
    with pytest.raises(BackendError, match="ended before the server finished"):
        await collect(eng2.generate(seq2, SamplingParams(max_tokens=3)))


async def test_bad_input_gets_typed_errors(fake: MisbehavingServer, make_engine: Any, tokenizer: Any) -> None:
    with pytest.raises(BackendError, match="not an http"):
        HttpEngine("ftp://example.org", None, tokenizer=tokenizer)
    with pytest.raises(BackendError, match="unknown http backend options"):
        HttpEngine(fake.url("ok"), None, tokenizer=tokenizer, temperature=3)
    eng = make_engine(fake.url("ok"), max_model_len=64)
    with pytest.raises(InvalidTokensError, match="outside the vocabulary"):
        await eng.open([len(tokenizer) + 5])
    with pytest.raises(InvalidTokensError, match="max_model_len=64"):
        await eng.open([1] * 65)
    seq = await eng.open([1, 2, 3])
    await eng.close(seq)
    with pytest.raises(SequenceClosedError):
        await eng.append(seq, [4])


# ------------------------------------------------------------------------------------------ real llama.cpp server


async def test_llama_server_answers_and_its_prefix_cache_hits(llama_server: LlamaServer, make_engine: Any,
                                                              tokenizer: Any) -> None:
    """The real server: text prompts, streamed answer, and each follow-up request reuses the server's KV."""
    eng = make_engine(llama_server.base_url, extra_body={"repeat_penalty": 1.0})
    prompt = chat_prompt(tokenizer)
    seq = await eng.open(prompt)
    first = await collect(eng.generate(seq, SamplingParams(max_tokens=12)))
    assert text_of(first).strip() and eng.http.api == "text"
    assert tokenizer.decode(eng.tokens(seq)[len(prompt):], skip_special_tokens=True) == text_of(first)
    history = len(eng.tokens(seq))
    more = tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd of Spain?<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False)
    await eng.append(seq, more)
    second = await collect(eng.generate(seq, SamplingParams(max_tokens=8)))
    assert second[-1].finish_reason in ("stop", "length") and text_of(second).strip()
    reused, computed = llama_server.prefix_hits()[-1]
    # All of the history but the last generated token (sampled, never evaluated) came from the server's cache.
    assert reused >= history - 2 and computed <= len(more) + 2, (reused, computed, history, len(more))
    assert eng.stats().prefill_computed > 0 and eng.stats().decode_tokens >= len(ids_of(first))
    await eng.close(seq)


async def test_llama_server_serves_concurrent_sequences(llama_server: LlamaServer, make_engine: Any,
                                                        tokenizer: Any) -> None:
    eng = make_engine(llama_server.base_url, extra_body={"repeat_penalty": 1.0})
    seqs = [await eng.open(chat_prompt(tokenizer, q)) for q in ("Name a color.", "Name a fruit.")]
    results = await asyncio.gather(*(collect(eng.generate(s, SamplingParams(max_tokens=6))) for s in seqs))
    for deltas in results:
        assert deltas[-1].finish_reason in ("stop", "length") and text_of(deltas).strip()
    for s in seqs:
        await eng.close(s)
