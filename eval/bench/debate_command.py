"""`moa-stream bench debate`: streaming vs sequential debate (eval/bench/debate.py)."""

from __future__ import annotations

import argparse
import json

from moa_stream.cli import positive_int

from .options import add_moa_arguments, run_on_moa


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench debate`."""
    add_moa_arguments(p, "MoA config file (YAML/TOML); debaters from its first layer")
    p.add_argument("--agents", type=positive_int, default=3, metavar="N", help="debaters (3)")
    p.add_argument("--rounds", type=positive_int, default=2, metavar="R", help="rounds (2)")
    p.add_argument("--turn-tokens", type=positive_int, default=128, metavar="N",
                   help="tokens every debater writes a round, exactly (128)")
    p.add_argument("--answer-tokens", type=positive_int, default=64, metavar="N", help="answer tokens at most (64)")
    p.add_argument("--chunk", type=positive_int, default=None, metavar="N", help="chunk size in tokens")
    p.add_argument("--question", default=None, help="the question to answer")


def main(args: argparse.Namespace) -> int:
    """Run `bench debate` and print its JSON or table."""

    from eval.bench.debate import debate_bench_config, run_debate_bench
    from eval.bench.ttft import DEFAULT_QUESTION
    from moa_stream import MoAConfig

    cfg = debate_bench_config(MoAConfig.load(args.config), args.agents, args.rounds, args.turn_tokens,
                              args.answer_tokens)
    cfg = cfg.model_copy(update={"staircase": cfg.staircase.with_chunk(args.chunk)})

    result = run_on_moa(cfg, args.model, lambda moa: run_debate_bench(moa, args.question or DEFAULT_QUESTION))
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"debate: {len(result['setup']['agents'])} agents x {result['setup']['rounds']} rounds")
    for col in ("system", "ttft_s", "total_s", "answer tokens", "prefill computed", "re-read tokens"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for mode in ("debate", "debate-sequential"):
        row = result[mode]
        reread = sum(r["reread_tokens"] for r in row["rounds"].values())
        table.add_row(mode, f"{row['ttft_s']:.2f}", f"{row['total_s']:.2f}", str(row["answer_tokens"]),
                      str(row["prefill_computed"]), str(reread))
    console = Console()
    console.print(table)
    if result["debate_ttft_ratio"] is not None:
        console.print(f"streaming debate TTFT = {result['debate_ttft_ratio']:.3f} x sequential (target <= 0.2)")
    return 0
