"""The proposer runner: one proposal generated, streamed as deltas and cut into chunks for the aggregator."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from ..agent.proposer import run_tool_proposer
from ..agent.slot import AgentSlot, Chunk, Emit, Failure, ProposalResult
from ..config import StaircaseConfig
from ..events import AgentError, ProposerDelta
from .context import Message
from .pacing import Pacing


async def run_proposer(slot: AgentSlot, idx: int, messages: list[Message], question: str, reuse: bool,
                       knobs: StaircaseConfig, out: asyncio.Queue[Chunk | Failure], emit: Emit,
                       t0: float, result: ProposalResult, pacing: Pacing | None = None) -> None:
    """Generate one proposal, emitting deltas and cutting it into chunks; never raises (failures are events).

    With pacing, a proposer that has written a chunk too far ahead of the aggregator leaves its generation there
    and starts another once the pacing lets it (moa_stream/moa/pacing.py); a proposer never held writes its proposal
    in one generation, as without pacing.
    """
    if slot.cfg.tools:  # a tool-using proposer runs its own tool loop (moa_stream/agent/proposer.py)
        await run_tool_proposer(slot, idx, messages, question, reuse, knobs, out, emit, t0, result)
        return
    name, layer = slot.cfg.name, slot.layer
    gen = None
    failed = False
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races a ready result.
        async with asyncio.timeout(knobs.agent_timeout_s) as deadline:
            await slot.start(messages, question, reuse)
            assert slot.seq is not None
            index, buf, buf_tokens = 0, "", 0
            loop = asyncio.get_running_loop()
            budget, part, finished = slot.cfg.max_tokens, 0, False
            while not finished:
                params = slot.sampling(budget - result.tokens)
                if pacing is not None:
                    params = dataclasses.replace(params, priority=pacing.priority(),
                                                 seed=part_seed(slot.cfg.seed, part))
                part += 1
                held, finished = False, True  # a stream that ends without a finish reason ends the proposal
                gen = slot.engine.generate(slot.seq, params)
                async for delta in gen:
                    deadline.reschedule(loop.time() + knobs.agent_timeout_s)  # the timeout is on silence
                    result.tokens += len(delta.token_ids)
                    buf_tokens += len(delta.token_ids)
                    if delta.text:
                        buf += delta.text
                        result.text += delta.text
                        emit(ProposerDelta(name, layer, delta.text, time.perf_counter() - t0))
                    if delta.finish_reason is not None:
                        result.finish_reason = delta.finish_reason
                        slot.after_eos = bool(delta.token_ids) and delta.token_ids[-1] in slot.engine.eos_token_ids
                        break
                    if buf_tokens >= knobs.chunk_size(index):
                        _put(out, pacing, Chunk(idx, index, buf, buf_tokens, final=False))
                        index, buf, buf_tokens = index + 1, "", 0
                        if pacing is not None and pacing.must_wait(idx):
                            held, finished = True, False
                            break
                await gen.aclose()
                gen = None
                if held:
                    assert pacing is not None
                    buf, buf_tokens = _unread(slot, result, buf, buf_tokens)
                    if result.tokens >= budget:  # the unread tokens were its last ones
                        result.finish_reason = "length"
                        break
                    deadline.reschedule(None)  # waiting for the aggregator to read is not silence
                    await pacing.before_chunk(idx)
                    deadline.reschedule(loop.time() + knobs.agent_timeout_s)
        _put(out, pacing, Chunk(idx, index, buf, buf_tokens, final=True))
    except Exception as exc:  # TimeoutError included: the agent is dropped, the others go on
        timed_out = isinstance(exc, TimeoutError)
        why = f"no output for {knobs.agent_timeout_s:g} s" if timed_out else f"{type(exc).__name__}: {exc}"
        result.error = why
        emit(AgentError(name, layer, why, "timeout" if timed_out else "exception"))
        out.put_nowait(Failure(idx, why, exc))
        failed = True
    finally:
        if gen is not None:
            await gen.aclose()
        if failed:
            await slot.reset()  # its context holds a broken turn; the next turn starts it afresh


def part_seed(seed: int | None, part: int) -> int | None:
    """The seed of a proposal's part-th generation: the agent's own for the first, distinct ones after it."""
    if seed is None or part == 0:
        return seed
    return (seed * 1_000_003 + part) % 2**63


def _unread(slot: AgentSlot, result: ProposalResult, buf: str, buf_tokens: int) -> tuple[str, int]:
    """Tokens the engine sampled into the sequence after the last delta read (a step may end as the stream is left)
    join the next chunk, so that the proposal's text is what its sequence holds."""
    assert slot.seq is not None
    extra = slot.engine.tokens(slot.seq)[slot.prompt_tokens + result.tokens:]
    if not extra:
        return buf, buf_tokens
    text = slot.engine.tokenizer.decode(extra, skip_special_tokens=True)
    result.tokens += len(extra)
    result.text += text
    return buf + text, buf_tokens + len(extra)


def _put(out: asyncio.Queue[Chunk | Failure], pacing: Pacing | None, chunk: Chunk) -> None:
    out.put_nowait(chunk)
    if pacing is not None:
        pacing.wrote(chunk.proposer)
