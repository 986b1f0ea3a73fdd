"""Prompt-lookup decoding on tool-call output: the stateful agent steps with the engine's drafter off and on.

Tool calls repeat names, paths and values the context already holds, which is what a prompt-lookup draft
guesses. The same forced-call workload runs on two fresh engines, one built with a `PromptLookup`; decode tokens
per second count the tokens after each step's first over the time they took, and acceptance is the engine's
`draft_accepted / draft_tokens`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine import Engine
from engine.prompt_lookup import PromptLookup

from .engines import EngineFactory
from .mode_run import ModeRun
from .workload import ChatRendering, Workflow


@dataclass(frozen=True)
class PromptLookupBenchConfig:
    """The drafter's shape and how many steps of one agent's workflow the section replays."""

    max_draft: int = 8
    steps: int = 6


RunStateful = Callable[[Engine, Sequence[Workflow], ChatRendering], Awaitable[ModeRun]]


async def run_prompt_lookup_bench(factory: EngineFactory, flows: Sequence[Workflow], rendering: ChatRendering,
                                  run_stateful: RunStateful, warm: Callable[[Engine], Awaitable[None]],
                                  config: PromptLookupBenchConfig) -> dict[str, Any]:
    """Decode tok/s off and on, the speedup, and the acceptance rate."""
    lookup = PromptLookup(max_draft=config.max_draft)
    rows: dict[str, dict[str, Any]] = {}
    for name, drafter in (("off", None), ("on", lookup)):
        engine = factory(None, drafter)
        try:
            await warm(engine)
            run = await run_stateful(engine, flows, rendering)
        finally:
            await engine.shutdown()
        counters = run.engine
        drafted, accepted = counters.get("draft_tokens", 0), counters.get("draft_accepted", 0)
        rows[name] = {"decode_tok_s": run.decode_tok_s(), "step_median_s": run.summary()["step_median_s"],
                      "decode_tokens": counters.get("decode_tokens", 0), "draft_tokens": drafted,
                      "draft_accepted": accepted, "acceptance": accepted / drafted if drafted else None,
                      "calls_matched": run.summary()["calls_matched"], "calls": run.summary()["calls"]}
    off, on = rows["off"]["decode_tok_s"], rows["on"]["decode_tok_s"]
    return {
        "prompt_lookup_speedup": on / off if on is not None and off else None,
        "prompt_lookup_acceptance": rows["on"]["acceptance"],
        "prompt_lookup": {**rows, "backend": factory.backend, "max_draft": config.max_draft,
                          "max_ngram": lookup.max_ngram, "min_ngram": lookup.min_ngram,
                          "workload": "1 stateful agent, forced tool calls of the shortest workflow",
                          "decode_tok_s": "tokens after each step's first token / the time they took"},
    }
