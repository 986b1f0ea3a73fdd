"""Structured output on TransformersEngine: xgrammar masks in the batched sampler, on the default and tiny models."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import jsonschema
import pytest
import torch

from engine import InvalidSamplingError, SamplingParams
from engine.structured_output import Grammar, JsonObject, JsonSchema, StructuralTag
from engine.structured_state import structurer_for
from engine.transformers_engine import TransformersEngine
from tests.conftest import collect, count_model_positions, tiny_llama

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24},
                   "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}


def tool_call_tag(schema: dict[str, Any], at_least_one: bool = True) -> StructuralTag:
    """Free text, then `<tool_call>{json valid under schema}</tool_call>` (xgrammar's triggered tags)."""
    return StructuralTag.of({"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<tool_call>"], "at_least_one": at_least_one, "stop_after_first": True,
        "tags": [{"type": "tag", "begin": "<tool_call>", "content": {"type": "json_schema", "json_schema": schema},
                  "end": "</tool_call>"}]}})


def chat(eng: TransformersEngine, question: str) -> list[int]:
    """The default model's chat prompt for one user question."""
    return list(eng.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))


# ------------------------------------------------------------------------------------------- default model


async def test_json_schema_greedy_parses_and_validates(engine: TransformersEngine) -> None:
    """Greedy under a JSON schema writes JSON valid under it and ends with "stop" where the object closes."""
    seq = await engine.open(chat(engine, "Describe a person as JSON with a name and an age."))
    ids, text, reason = await collect(engine, seq, SamplingParams(max_tokens=60, structured=JsonSchema.of(PERSON)))
    assert reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)
    assert ids[-1] in engine.eos_token_ids, "the grammar allowed EOS only once the object was complete"
    await engine.close(seq)


async def test_json_object_and_grammar_constrain(engine: TransformersEngine) -> None:
    """Any JSON object parses; `root ::= "yes" | "no"` writes exactly one of the two words."""
    seq = await engine.open(chat(engine, "Give me a JSON object about cats."))
    _, text, reason = await collect(engine, seq, SamplingParams(max_tokens=80, structured=JsonObject()))
    if reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a long object cut by max_tokens is still a valid prefix of one
        assert text.lstrip().startswith("{")
    await engine.close(seq)
    for question in ("Is the sky blue? Answer yes or no.", "Is fire cold? Answer yes or no."):
        seq = await engine.open(chat(engine, question))
        _, text, reason = await collect(engine, seq, SamplingParams(max_tokens=10,
                                                                    structured=Grammar('root ::= "yes" | "no"')))
        assert (text, reason) in (("yes", "stop"), ("no", "stop"))
        await engine.close(seq)


async def test_structural_tag_tool_call_is_parseable(engine: TransformersEngine) -> None:
    """A <tool_call> region holds JSON valid under the tool's schema, between the begin and end tags."""
    question = 'What is the weather in Paris? Call get_weather by writing <tool_call>{"city": ...}</tool_call>.'
    seq = await engine.open(chat(engine, question))
    _, text, reason = await collect(engine, seq, SamplingParams(max_tokens=60, structured=tool_call_tag(WEATHER)))
    assert reason == "stop"
    assert "<tool_call>" in text and "</tool_call>" in text
    body = text.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0]
    jsonschema.validate(json.loads(body), WEATHER)
    await engine.close(seq)


async def test_bad_schema_and_grammar_fail_at_generate(engine: TransformersEngine) -> None:
    """A schema or grammar xgrammar cannot compile: InvalidSamplingError naming it, raised before any compute."""
    seq = await engine.open(chat(engine, "Hi"))
    bad = [(JsonSchema.of({"type": "objectx"}), "objectx"), (Grammar('root ::= foo'), '"foo" is not defined'),
           (StructuralTag.of({"type": "structural_tag", "format": {"type": "nope"}}), "nope")]
    for structured, named in bad:
        with count_model_positions(engine) as fed:
            with pytest.raises(InvalidSamplingError, match=named):
                engine.generate(seq, SamplingParams(max_tokens=4, structured=structured))
        assert fed.count == 0
    _, _, reason = await collect(engine, seq, SamplingParams(max_tokens=2))  # the sequence is still usable
    assert reason in ("stop", "length")
    await engine.close(seq)


# ------------------------------------------------------------------------------------------- tiny model


async def test_batched_constrained_and_free_equal_sequential_runs() -> None:
    """Constrained and free sequences share forward passes; each one's greedy output equals its run alone."""
    eng = TransformersEngine(tiny_llama(), block_size=4, kv_cache_bytes=4 << 20)
    try:
        rng = random.Random(3)
        prompts = [[rng.randrange(1, 510) for _ in range(9 + i)] for i in range(4)]
        kinds = [JsonObject(), None, Grammar('root ::= ("a" | "b" | "c")+ " end"'), None]
        params = [SamplingParams(max_tokens=12, ignore_eos=True, structured=k) for k in kinds]

        async def run(i: int) -> list[int]:
            seq = await eng.open(prompts[i])
            ids, _, _ = await collect(eng, seq, params[i])
            await eng.close(seq)
            return ids

        alone = [await run(i) for i in range(4)]
        steps = eng.stats().forward_steps
        together = await asyncio.gather(*(run(i) for i in range(4)))
        assert together == alone
        assert eng.stats().forward_steps - steps < sum(len(a) for a in alone), "the sequences shared steps"
        assert alone[0] != alone[1] or alone[2] != alone[3]
        text = eng.tokenizer.decode(alone[2])
        assert set(text.removesuffix(" end")) <= set("abc"), text
    finally:
        await eng.shutdown()


def test_mask_covers_padded_and_short_vocabularies() -> None:
    """A model row longer than the tokenizer (padded lm_head) masks the padding; a shorter one masks in range."""
    tok = tiny_llama().tokenizer
    yes_no = Grammar('root ::= "yes" | "no"')
    padded = structurer_for(tok, len(tok) + 64, [2]).start(yes_no)
    row = torch.zeros(len(tok) + 64)
    padded.mask(row)
    allowed = set(torch.isfinite(row).nonzero().flatten().tolist())
    assert allowed and all(t < len(tok) for t in allowed)
    assert all(tok.decode([t]) in ("y", "ye", "yes", "n", "no") for t in allowed)
    short = structurer_for(tok, 512, [511]).start(JsonObject())
    row = torch.zeros(512)
    short.mask(row)
    assert 0 < int(torch.isfinite(row).sum()) < 512
