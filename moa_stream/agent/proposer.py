"""A MoA proposer with tools: it runs its own tool loop and streams what it finds into the aggregator as chunks.

The aggregator reads the proposer's own words and, in place of each call's markup, one compact line with the
call and its result (`[called ls({}) -> {...}]`). Chunks leave as soon as they fill, so the staircase starts
while the proposer is still calling tools; a step ends at its first call, so each result reaches the
aggregator as soon as the call returns.
"""

from __future__ import annotations

import asyncio

from ..tools import ToolCall, ToolResult
from ..tools.call_stream import CallStream, Piece, TextPiece
from .agent import Agent
from .events import AgentDelta, AgentDone
from .slot import AgentSlot, ChunkWriter, ProposerRun


def _text(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, TextPiece))


def tool_agent(slot: AgentSlot) -> Agent:
    """The slot's tool agent, made on first use from its config; a step ends at its first call, so that each
    result reaches the readers as soon as the call returns."""
    if slot.tool_agent is None:
        slot.tool_agent = Agent.from_config(slot.cfg, slot.engine, slot=slot, draft_engine=slot.draft_engine,
                                            parallel_calls=False)
    agent: Agent = slot.tool_agent
    return agent


async def run_tool_proposer(run: ProposerRun) -> None:
    """Run a tool-using proposer's turn, cutting its text and compact calls into chunks; never raises."""
    slot, knobs, result = run.slot, run.knobs, run.result
    writer = ChunkWriter(run)

    def say(text: str, tokens: int) -> None:
        if text:  # tokens whose text the call stream holds back (call markup) fill no chunk
            writer.said(text, tokens)

    try:
        agent = tool_agent(slot)
        fmt = agent.format
        stream = CallStream(fmt)  # the step's text without its call blocks (calls arrive as events)
        calls: dict[str, ToolCall] = {}
        step = 0
        async with asyncio.timeout(knobs.agent_timeout_s) as deadline:
            loop = asyncio.get_running_loop()
            async for ev in agent.turn(run.messages, run.question, run.reuse):
                deadline.reschedule(loop.time() + knobs.agent_timeout_s)  # the timeout is on silence
                if isinstance(ev, AgentDelta):
                    if ev.step != step:
                        say(_text(stream.finish()), 0)
                        stream = CallStream(fmt)
                    step = ev.step
                    result.tokens += 1  # a delta per sampled token; AgentDone gives the exact count
                    say(_text(stream.feed(ev.text)), 1)
                elif isinstance(ev, ToolCall):
                    calls[ev.id] = ev
                elif isinstance(ev, ToolResult):
                    say(_text(stream.finish()), 0)
                    line = fmt.compact(calls.get(ev.id, ToolCall(ev.id, ev.name)), ev) + "\n"
                    say(line, len(slot.fmt.encode_text(line)))
                elif isinstance(ev, AgentDone):
                    say(_text(stream.finish()), 0)
                    result.tokens = ev.metrics.decode_tokens
                    result.finish_reason = "stop" if ev.metrics.finish == "answer" else ev.metrics.finish
        writer.ended()
    except Exception as exc:  # TimeoutError included: the agent is dropped, the others go on
        writer.failed(exc)
        await slot.reset()
