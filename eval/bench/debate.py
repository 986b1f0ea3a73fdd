"""The debate bench: streaming debate against sequential debate on the same agents, seeds and token budgets.

Every debater writes up to `turn_tokens` a round (past any end of text), the answer at most `answer_tokens`, on the
same seeds; each system on a cold prefix cache. A streaming debate's agents still writing when the answer is over are
stopped (their text would be read by nobody), so it writes fewer tokens than the sequential one. Per system: TTFT,
total time, answer tokens, prefill computed, and per round what its agents wrote and computed and whether any of
them read a token twice (`reread_tokens`: context tokens computed or reused more than once; 0 means every round's
appends were its Δ).
"""

from __future__ import annotations

from typing import Any

from moa_stream import DEBATE_MODES, AgentMetrics, MoA, MoAConfig

from .ttft import DEFAULT_QUESTION, TimedRun, timed_run


def debate_bench_config(config: MoAConfig, agents: int, rounds: int, turn_tokens: int,
                        answer_tokens: int) -> MoAConfig:
    """`agents` debaters from the config's first layer (cycled), `rounds` rounds of exactly `turn_tokens` each."""
    base = config.layers[0]
    debaters = []
    for i in range(agents):
        a = base[i % len(base)]
        again = i >= len(base)  # a cycled agent gets a name and a seed of its own
        debaters.append(a.model_copy(update={"name": f"{a.name}{i}" if again else a.name, "max_tokens": turn_tokens,
                                             "ignore_eos": True, "seed": (a.seed or 0) + i if again else a.seed}))
    debate = config.debate.model_copy(update={"agents": debaters, "rounds": rounds, "final": "aggregator"})
    aggregator = config.aggregator.model_copy(update={"max_tokens": answer_tokens})
    return config.model_copy(update={"debate": debate, "aggregator": aggregator})


def _reread(a: AgentMetrics) -> int:
    """Tokens of the agent's context it computed or reused more than once (a re-prefill's second reading)."""
    return max(0, a.prefill_computed + a.prefill_reused + a.decode_tokens - a.context_tokens)


def _row(run: TimedRun) -> dict[str, Any]:
    m = run.metrics
    rounds: dict[int, dict[str, int]] = {}
    for a in m.agents.values():
        if a.role == "proposer":
            r = rounds.setdefault(a.layer + 1, {"written_tokens": 0, "prefill_computed": 0, "reread_tokens": 0})
            r["written_tokens"] += a.completion_tokens
            r["prefill_computed"] += a.prefill_computed
            r["reread_tokens"] += _reread(a)
    return {
        "ttft_s": m.ttft_s,
        "total_s": m.total_s,
        "answer_tokens": len(run.token_times),
        "prefill_computed": m.prefill_computed,
        "decode_tokens": m.decode_tokens,
        "chunks_ingested": m.chunks_ingested,
        "rounds": {str(k): v for k, v in sorted(rounds.items())},
    }


async def run_debate_bench(moa: MoA, question: str = DEFAULT_QUESTION, warmup: bool = True) -> dict[str, Any]:
    """Streaming and sequential debate on one question; `debate_ttft_ratio` is streaming TTFT / sequential."""
    if warmup:  # the first forward passes pay one-off costs that would land on whichever system runs first
        await moa.run("Hi.", mode="single", max_tokens=4)
    # Each system on a cold prefix cache (a salt of its own): what one system computed never serves the other.
    runs = {mode: await timed_run(moa, question, mode, cache_salt=f"bench-{mode}") for mode in DEBATE_MODES}
    out: dict[str, Any] = {mode: _row(run) for mode, run in runs.items()}
    stream, seq = out["debate"]["ttft_s"], out["debate-sequential"]["ttft_s"]
    out["debate_ttft_ratio"] = stream / seq if stream and seq else None
    cfg = moa.config
    out["setup"] = {
        "question": question,
        "agents": [a.name for a in cfg.debaters()],
        "rounds": cfg.debate.rounds,
        "turn_tokens": [a.max_tokens for a in cfg.debaters()],
        "seeds": [a.seed for a in cfg.debaters()],
        "answer_tokens_max": cfg.aggregator.max_tokens,
        "staircase": cfg.staircase.model_dump(),
    }
    return out
