"""OpenAI tool calling through the server, driven by the official `openai` client on loopback."""

from __future__ import annotations

import json

import openai
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FORCE = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


async def test_a_full_tool_round_trip_with_the_openai_client(live, engine):
    client = live.client()
    first = await client.chat.completions.create(
        model="moa-stream", messages=ASK, tools=[WEATHER], tool_choice=FORCE, max_tokens=48)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # The client runs the tool and sends the conversation back with the result; no call is wanted now.
    second = await client.chat.completions.create(
        model="moa-stream", tools=[WEATHER], tool_choice="none", max_tokens=12, messages=[
            *ASK, choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"weather": "sunny, 21 C"})}])
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    assert engine.stats().sequences_open == 0


async def test_streamed_tool_calls_arrive_as_deltas_and_finish_with_tool_calls(live):
    stream = await live.client().chat.completions.create(
        model="moa-stream:classic", messages=ASK, tools=[WEATHER], tool_choice="required", stream=True,
        max_tokens=48)
    chunks = [c async for c in stream]
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert isinstance(json.loads(arguments)["city"], str)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize(("extra", "needle"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
    ({"tools": [WEATHER, WEATHER]}, "unique"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tools": [WEATHER], "messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "call_x"),
    ({"tools": [WEATHER], "messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"}]}, "not valid JSON"),
])
async def test_bad_tools_and_malformed_tool_messages_get_clear_400s(live, extra, needle):
    body = {"model": "moa-stream", "messages": ASK, **extra}
    with pytest.raises(openai.BadRequestError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        await live.client().chat.completions.create(**body)


async def test_a_session_keeps_its_sequences_between_requests_and_appends_only_the_new_turn(live, engine):
    client, headers = live.client(), {"X-Session-Id": "chat-1"}
    ask = [{"role": "user", "content": "Name a color."}]
    first = await client.chat.completions.create(model="moa-stream", messages=ask, max_tokens=6,
                                                 extra_headers=headers)
    assert engine.stats().sequences_open == 3  # both proposers and the aggregator stay, pinned for the next turn
    again = [*ask, {"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And another one?"}]
    second = await client.chat.completions.create(model="moa-stream", messages=again, max_tokens=6,
                                                  extra_headers=headers)
    # Only the new turn was computed on each kept sequence: the history was neither re-read nor looked up.
    for name, agent in second.model_extra["moa"]["agents"].items():
        assert agent["prefill_reused"] == 0 and 0 < agent["prefill_computed"] < agent["prompt_tokens"], name
    assert engine.stats().sequences_open == 3
    # A history the client did not get from us (an edited answer) starts the session afresh.
    edited = [*ask, {"role": "assistant", "content": "Purple."}, {"role": "user", "content": "And another one?"}]
    third = await client.chat.completions.create(model="moa-stream", messages=edited, max_tokens=6,
                                                 extra_headers=headers)
    agg = third.model_extra["moa"]["agents"]["aggregator"]
    assert agg["prefill_computed"] + agg["prefill_reused"] >= agg["prompt_tokens"] - 1
    sessions = live.app.state.server.sessions
    assert len(sessions) == 1
    await sessions.close()
    assert engine.stats().sequences_open == 0
