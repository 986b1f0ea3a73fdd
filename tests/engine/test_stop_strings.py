"""One stop-string rule on every backend: the earliest match wins, whatever order the stop strings are given in.

With stop=("B", "A") the text "xAyB" is cut to "x" by the shared StopMatcher, by the embedded engine's
detokenizer and end to end on both the embedded engine and the HTTP engine.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from engine import SamplingParams, StopMatcher, models
from engine.detokenizer import Detokenizer
from engine.remote.http_engine import HttpEngine
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect
from tests.misbehaving_server import MisbehavingServer

TEXT = "xAyB"
STOP = ("B", "A")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The SmolLM2 tokenizer."""
    return AutoTokenizer.from_pretrained(models.resolve(None))


def chain_model(tokenizer: Any, cycle: list[int]) -> models.LoadedModel:
    """A tiny Llama whose greedy output follows `cycle`: after cycle[i] it always emits cycle[i + 1].

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding; each
    cycle token gets its own one-hot embedding and the LM head maps that one-hot onto the next token.
    """
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (tok, nxt) in enumerate(zip(cycle, cycle[1:] + cycle[:1], strict=True)):
            model.model.embed_tokens.weight[tok] = torch.nn.functional.one_hot(torch.tensor(k), 64).float()
            model.lm_head.weight[nxt, k] = 1.0
    return models.LoadedModel(model=model, tokenizer=tokenizer, name="chain", path="<crafted>")


def test_stop_matcher_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    scan = StopMatcher(["[more"])
    assert scan.push("answer [mo") == ("answer ", False)  # "[mo" could be the start of the stop string
    assert scan.push("ve on") == ("[move on", False)  # it was not
    assert scan.push(" x [more from 2]") == (" x ", True)
    assert StopMatcher([]).push("abc") == ("abc", False)


@pytest.mark.parametrize("pieces", [["xAyB"], ["xA", "yB"], list("xAyB")])
def test_stop_matcher_earliest_match_wins(pieces: list[str]) -> None:
    matcher = StopMatcher(STOP)
    out = ""
    for piece in pieces:
        text, hit = matcher.push(piece)
        out += text
        if hit:
            break
    assert (out, hit) == ("x", True)


@pytest.mark.parametrize("text", [TEXT, "xAB"])  # "xAB" puts both stop strings in one token ("AB")
def test_detokenizer_cuts_at_the_earliest_stop(tokenizer: Any, text: str) -> None:
    detok = Detokenizer(tokenizer, STOP)
    out, hit = "", False
    for tok in tokenizer.encode(text, add_special_tokens=False):
        piece, hit = detok.push(tok)
        out += piece
        if hit:
            break
    assert (out, hit) == ("x", True)


async def test_embedded_engine_cuts_at_the_earliest_stop(tokenizer: Any) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)  # x, Ay, B
    start = ids[-1:]  # after "B" the model writes x, Ay, B again
    eng = TransformersEngine(chain_model(tokenizer, [*start, *ids[:-1]]), block_size=4, kv_cache_bytes=1 << 20)
    try:
        seq = await eng.open(start)
        got, text, reason = await collect(eng, seq, SamplingParams(max_tokens=len(ids)))
        assert (got, text, reason) == (ids, TEXT, "length")  # the model writes exactly "xAyB"
        seq2 = await eng.open(start)
        _, text, reason = await collect(eng, seq2, SamplingParams(max_tokens=len(ids), stop=STOP))
        assert (text, reason) == ("x", "stop")
    finally:
        await eng.shutdown()


@pytest.mark.parametrize("pieces", [["xA", "yB"], ["xAyB"]])
@pytest.mark.parametrize("api", ["tokens", "text"])
async def test_http_engine_cuts_at_the_earliest_stop(fake: MisbehavingServer, tokenizer: Any, pieces: list[str],
                                                     api: str) -> None:
    eng = HttpEngine(fake.url("pieces"), None, tokenizer=tokenizer, api=api, extra_body={"pieces": pieces})
    try:
        prompt = tokenizer.encode("Say it.", add_special_tokens=False)
        seq = await eng.open(prompt)
        deltas = [d async for d in eng.generate(seq, SamplingParams(max_tokens=8, stop=STOP))]
        assert "".join(d.text for d in deltas) == "x" and deltas[-1].finish_reason == "stop"
        assert tokenizer.decode(eng.tokens(seq)[len(prompt):]) == "x"
    finally:
        await eng.shutdown()
