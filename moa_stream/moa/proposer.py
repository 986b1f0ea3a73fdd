"""The proposer runner: one proposal generated, streamed as deltas and cut into chunks for the aggregator."""

from __future__ import annotations

import asyncio
import dataclasses

from ..agent.proposer import run_tool_proposer
from ..agent.slot import ChunkWriter, ProposerRun
from .pacing import Pacing


async def run_proposer(run: ProposerRun, pacing: Pacing | None = None) -> None:
    """Generate one proposal, emitting deltas and cutting it into chunks; never raises (failures are events).

    With pacing, a proposer that has written a chunk too far ahead of the aggregator leaves its generation there
    and starts another once the pacing lets it (moa_stream/moa/pacing.py); a proposer never held writes its proposal
    in one generation, as without pacing.
    """
    if run.slot.cfg.tools:  # a tool-using proposer runs its own tool loop (moa_stream/agent/proposer.py)
        await run_tool_proposer(run)
        return
    slot, knobs, result, idx = run.slot, run.knobs, run.result, run.idx
    writer = ChunkWriter(run)
    gen = None
    failed = False
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races a ready result.
        async with asyncio.timeout(knobs.agent_timeout_s) as deadline:
            await slot.start(run.messages, run.question, run.reuse)
            assert slot.seq is not None
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
                    writer.add(delta.text, len(delta.token_ids))
                    if delta.finish_reason is not None:  # what is left goes out as the last chunk
                        result.finish_reason = delta.finish_reason
                        slot.after_eos = bool(delta.token_ids) and delta.token_ids[-1] in slot.engine.eos_token_ids
                        break
                    if writer.cut() is not None and pacing is not None:
                        pacing.wrote(idx)
                        if pacing.must_wait(idx):
                            held, finished = True, False
                            break
                await gen.aclose()
                gen = None
                if held:
                    assert pacing is not None
                    _read_unread(writer)
                    if result.tokens >= budget:  # the unread tokens were its last ones
                        result.finish_reason = "length"
                        break
                    deadline.reschedule(None)  # waiting for the aggregator to read is not silence
                    await pacing.before_chunk(idx)
                    deadline.reschedule(loop.time() + knobs.agent_timeout_s)
        writer.ended()
        if pacing is not None:
            pacing.wrote(idx)
    except Exception as exc:  # TimeoutError included: the agent is dropped, the others go on
        writer.failed(exc)
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


def _read_unread(writer: ChunkWriter) -> None:
    """Tokens the engine sampled into the sequence after the last delta read (a step may end as the stream is left)
    join the chunk being filled, so that the proposal's text is what its sequence holds."""
    slot, result = writer.run.slot, writer.run.result
    assert slot.seq is not None
    extra = slot.engine.tokens(slot.seq)[slot.prompt_tokens + result.tokens:]
    if extra:
        result.tokens += len(extra)
        writer.add(slot.engine.tokenizer.decode(extra, skip_special_tokens=True), len(extra))
