"""Splitting streamed model text into plain text and tool calls, however the text is cut into deltas."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from moa_stream.tools import ToolCall, call_format
from moa_stream.tools.call_stream import CallPiece, CallStream, TextPiece

FMT = call_format("hermes")
CALL_A = FMT.render_call(ToolCall("a", "ls", {"a": True}))
CALL_B = FMT.render_call(ToolCall("b", "cd", {"folder": "x<y"}))
TEXT = f"Let me look. <tool{CALL_A}then {CALL_B} done <tool_c"


def _run(deltas: list[str]) -> tuple[str, list[CallPiece]]:
    stream = CallStream(FMT)
    pieces = [p for d in deltas for p in stream.feed(d)] + stream.finish()
    text = "".join(p.text for p in pieces if isinstance(p, TextPiece))
    return text, [p for p in pieces if isinstance(p, CallPiece)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TEXT)), max_size=12))
def test_any_cut_into_deltas_gives_the_same_text_and_calls(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(TEXT)]
    text, calls = _run([TEXT[a:b] for a, b in itertools.pairwise(bounds)])
    assert text == "Let me look. <toolthen  done <tool_c"
    assert [(c.index, c.call.name, c.call.arguments) for c in calls] == [
        (0, "ls", {"a": True}), (1, "cd", {"folder": "x<y"})]


def test_a_call_is_handed_over_before_its_closing_tag() -> None:
    stream = CallStream(FMT)
    cut = CALL_A.index(FMT.call_close)
    assert stream.feed(CALL_A[:cut - 3]) == []  # the JSON is not complete yet
    early = stream.feed(CALL_A[cut - 3:cut])
    assert [p.call.name for p in early if isinstance(p, CallPiece)] == ["ls"]
    assert stream.feed(CALL_A[cut:] + " ok") == [TextPiece(" ok")]  # the same call is not handed twice


def test_an_unclosed_broken_block_ends_as_a_call_with_its_error() -> None:
    text, calls = _run(["x ", FMT.call_open, '{"name": "ls", "argu'])
    assert text == "x " and len(calls) == 1 and calls[0].call.error


BARE = ' {"name": "cd", "arguments": {"folder": "a}b"}} and then some words'


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(BARE)), max_size=8))
def test_a_reply_that_opens_with_a_bare_call_is_that_call_however_it_is_cut(cuts: list[int]) -> None:
    """A model that writes the call's JSON without its block (Qwen2.5-Coder-1.5B does): the call, then the text."""
    bounds = [0, *sorted(cuts), len(BARE)]
    text, calls = _run([BARE[a:b] for a, b in itertools.pairwise(bounds)])
    assert [(c.call.name, c.call.arguments) for c in calls] == [("cd", {"folder": "a}b"})]
    assert text == " and then some words"
    assert FMT.parse(BARE)[0].arguments == {"folder": "a}b"} and FMT.strip_calls(BARE) == "and then some words"


def test_a_bare_object_later_in_the_reply_is_text_and_a_cut_off_one_is_an_error() -> None:
    later = 'Sure. {"name": "cd", "arguments": {}}'
    assert _run([later]) == (later, []) and FMT.parse(later) == []
    _, calls = _run(['{"name": "cd", "argum'])
    assert len(calls) == 1 and calls[0].call.error is not None
