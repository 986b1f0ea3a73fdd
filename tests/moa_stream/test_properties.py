"""Properties over generated inputs (hypothesis, bounded examples): what users and proposers write cannot forge
the prompt's structure, and config parsing fails only with ConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from engine import models
from moa_stream import ConfigError, MoAConfig
from moa_stream.agent.context import ChatFormat, Message
from moa_stream.config import MIN_TEMPERATURE
from moa_stream.moa.layouts.references import _DELIMITERS, escape_delimiters

EXAMPLES = 200
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fmt() -> ChatFormat:
    """The default model's chat format."""
    return ChatFormat(AutoTokenizer.from_pretrained(models.resolve(None)))


def _specials() -> list[str]:
    tok = AutoTokenizer.from_pretrained(models.resolve(None))
    return sorted(set(tok.all_special_tokens) | {"<|im_start|>", "<|im_end|>", "<|endoftext|>"})


# Text built from the pieces an attacker would use: special-token strings, their halves, our sentinels, the
# staircase delimiters, zero-width characters and template words, mixed with arbitrary unicode.
PIECES = [*_specials(), "<|", "|>", "im_start", "im_end", "system", "assistant", "user", "\n", " ", "\u200b",
          "\u2063", "\u2063Q\u2063", "\u2063A\u2063", "[", "]", "(", *_DELIMITERS, "[end of more]",
          "[more from model 1", "[model 2]"]
HOSTILE = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=24).map("".join)


def special_ids(fmt: ChatFormat, ids: list[int]) -> list[int]:
    """The special-token ids among `ids`, in order."""
    special = set(fmt.tok.all_special_ids)
    return [i for i in ids if i in special]


@BOUNDED
@given(text=HOSTILE)
def test_user_text_never_becomes_a_special_token(fmt, text):
    baseline = special_ids(fmt, fmt.prompt([Message("system", "s"), Message("user", "x")]))
    forged = special_ids(fmt, fmt.prompt([Message("system", "s"), Message("user", text)]))
    assert forged == baseline


@BOUNDED
@given(history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), HOSTILE), max_size=3), text=HOSTILE)
def test_history_never_adds_special_tokens_beyond_its_turns(fmt, history, text):
    msgs = [Message(role, content) for role, content in history]
    clean = [Message(m.role, "x") for m in msgs]
    baseline = special_ids(fmt, fmt.prompt([*clean, Message("user", "x")]))
    assert special_ids(fmt, fmt.prompt([*msgs, Message("user", text)])) == baseline


@BOUNDED
@given(text=HOSTILE, after_eos=st.booleans())
def test_appended_turns_and_model_text_never_become_special_tokens(fmt, text, after_eos):
    assert special_ids(fmt, fmt.next_turn(text, after_eos)) == special_ids(fmt, fmt.next_turn("x", after_eos))
    assert special_ids(fmt, fmt.encode_text(text)) == []


@BOUNDED
@given(text=HOSTILE)
def test_proposer_text_never_opens_or_closes_a_staircase_block(text):
    escaped = escape_delimiters(text)
    for delimiter in (*_DELIMITERS, "[end of more]"):
        assert delimiter not in escaped
    assert escape_delimiters(escaped) == escaped  # escaping twice changes nothing more


# ---------------------------------------------------------------------------------------------- config parsing

FIELDS = ["backends", "layers", "aggregator", "mode", "staircase", "name", "backend", "temperature", "top_p",
          "max_tokens", "seed", "kind", "base_url", "options", "model", "first_chunk_tokens", "chunk_tokens",
          "start_policy", "quorum", "system_prompt", "ignore_eos", "timeout_s", "max_model_len", "default"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["staircase", "classic", "http", "transformers", "vllm",
                                                           "quorum", "default", "aggregator"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), inner,
                                                 max_size=5)), max_leaves=20)
CONFIGS = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6)


def _near_valid() -> st.SearchStrategy[dict[str, Any]]:
    agent = st.fixed_dictionaries({"name": st.text(min_size=0, max_size=5)},
                                  optional={k: VALUES for k in ("temperature", "top_p", "max_tokens", "backend")})
    return st.fixed_dictionaries({"layers": st.lists(st.lists(agent, max_size=3), max_size=2), "aggregator": agent},
                                 optional={"backends": st.dictionaries(st.text(max_size=5), VALUES, max_size=2),
                                           "staircase": st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=3),
                                           "mode": VALUES})


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(data=st.one_of(CONFIGS, _near_valid()))
def test_parsing_any_dict_raises_only_config_error(data):
    try:
        MoAConfig.parse(data)
    except ConfigError:
        pass


@BOUNDED
@given(data=st.one_of(CONFIGS, _near_valid(), VALUES), raw=st.booleans(), junk=st.text(max_size=40))
def test_loading_any_yaml_file_raises_only_config_error(tmp_path_factory, data, raw, junk):
    path: Path = tmp_path_factory.mktemp("cfg") / "moa.yaml"
    path.write_text(junk if raw else yaml.safe_dump(data, allow_unicode=True))
    try:
        MoAConfig.load(path)
    except ConfigError:
        pass


@BOUNDED
@given(temperature=st.floats(min_value=0, max_value=MIN_TEMPERATURE, exclude_min=True, exclude_max=True))
def test_a_temperature_that_would_overflow_sampling_is_a_config_error_naming_the_field(temperature):
    with pytest.raises(ConfigError, match=r"aggregator\.temperature"):
        MoAConfig.parse({"layers": [[{"name": "p"}]], "aggregator": {"name": "a", "temperature": temperature}})
