"""The server's settings for the config's tool-using agents (context format, tool cache) and a request's format."""

from __future__ import annotations

import openai
import pytest

from moa_stream import MoA, ToolCacheConfig
from moa_stream.agent.proposer import tool_agent

from .live_server import server_config, serving

PURE_LUCKY = "tests.cli.agent_tools:pure_lucky"
ASK = {"model": "moa-stream:classic", "messages": [{"role": "user", "content": "Lucky number?"}], "max_tokens": 4,
       "temperature": 0}


def with_caller() -> MoA:
    """The server's test pipeline with one more proposer, which calls a pure tool once a turn."""
    cfg = server_config()
    caller = cfg.layers[0][0].model_copy(update={"name": "caller", "tools": [PURE_LUCKY], "tool_choice": "required",
                                                 "max_tool_steps": 1, "max_tokens": 40, "temperature": 0.0})
    return cfg.model_copy(update={"layers": [[*cfg.layers[0], caller]]})


def caller_of(moa: MoA):
    """The tool-using proposer's config."""
    return next(a for a in moa.config.layers[0] if a.tools)


async def test_settings_fill_in_tool_agents_and_a_request_picks_the_format(engine):
    moa = MoA.from_config(with_caller(), engines={"default": engine})
    cache = ToolCacheConfig(entries=4)
    async with serving(moa, agent_format="thread", tool_cache=cache) as live:
        state = live.app.state.server
        served = caller_of(state.moa)
        assert (served.format, served.tool_cache) == ("thread", cache)
        assert all(a.format is None for a in state.moa.config.layers[0] if not a.tools), "agents without tools stay"

        reply = await live.client().chat.completions.create(**ASK, extra_body={"agent_format": "compact"})
        assert reply.choices[0].finish_reason in ("stop", "length")
        (variant,) = state.variants.values()
        assert caller_of(variant).format == "compact" and caller_of(variant).tool_cache == cache

        with pytest.raises(openai.BadRequestError) as info:
            await live.client().chat.completions.create(**ASK, extra_body={"agent_format": "xml"})
        assert info.value.body["param"] == "agent_format", info.value.body


async def test_a_tool_agent_is_built_on_its_configs_format(engine):
    moa = MoA.from_config(with_caller().with_tool_agents(format="compact"), engines={"default": engine})
    conv = moa.conversation("classic")
    await conv.send("Lucky number?")
    slot = next(s for s in conv._slots_in_use() if s.cfg.tools)
    agent = tool_agent(slot)
    assert agent.context_format == "compact"
    prefix = agent.context.fmt.prefix()
    assert engine.tokens(slot.seq)[:len(prefix)] == prefix, "the proposer's sequence is the compact log"
    await conv.close()
