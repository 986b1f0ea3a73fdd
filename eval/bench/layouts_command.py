"""`moa-stream bench layouts`: each aggregator layout vs classic on a fixed prompt set (eval/bench/layouts.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from moa_stream import SIMPLE_START_POLICIES
from moa_stream.cli import positive_int

from .options import add_moa_arguments, run_on_moa


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench layouts`."""
    add_moa_arguments(p)
    p.add_argument("--prompts", type=positive_int, default=None, metavar="N",
                   help="run the first N prompts of eval/bench/layout_prompts.jsonl (default: all 12)")
    p.add_argument("--layouts", default=None, metavar="LIST",
                   help="layouts to compare with classic, comma-separated (default: every incremental one)")
    p.add_argument("--proposer-tokens", type=positive_int, default=96, metavar="N",
                   help="tokens every proposer writes at most (96; they stop at their end of text)")
    p.add_argument("--answer-tokens", type=positive_int, default=96, metavar="N",
                   help="answer tokens at most, the same for every layout (96)")
    p.add_argument("--chunk", type=positive_int, default=None, metavar="N", help="chunk size in tokens")
    p.add_argument("--first-chunk", type=positive_int, default=None, metavar="N",
                   help="tokens of each proposal before the answer starts (default: the config's)")
    p.add_argument("--start-policy", choices=SIMPLE_START_POLICIES, default=None,
                   help="when the answer starts (default: the config's; at_once: on the question alone, before "
                        "the proposers' prompts are read)")


def _table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"layouts vs classic over {result['setup']['prompts']} prompts "
                        f"(default: {result['default_layout']})")
    cols = ("layout", "worst_4gram", "rep4", "length_vs_classic", "rouge_vs_classic", "ttft_vs_classic",
            "prefill_computed")
    for col in cols:
        table.add_column(col, justify="left" if col == "layout" else "right")
    for name, row in result["layouts"].items():
        table.add_row(name, *(str(row[c]) if isinstance(row[c], int) or row[c] is None else f"{row[c]:.3f}"
                              for c in cols[1:]))
    return table


def main(args: argparse.Namespace) -> int:
    """Run the bench and print its JSON or a table."""

    from eval.bench.layouts import load_prompts, run_layout_bench
    from eval.bench.ttft import bench_config
    from moa_stream import MoAConfig

    cfg = bench_config(MoAConfig.load(args.config), args.proposer_tokens, args.answer_tokens, ignore_eos=False)
    staircase = cfg.staircase.with_chunk(args.chunk, args.first_chunk)
    if args.start_policy:
        staircase = staircase.model_copy(update={"start_policy": args.start_policy})
    cfg = cfg.model_copy(update={"staircase": staircase})
    layouts = [n.strip() for n in args.layouts.split(",") if n.strip()] if args.layouts else None

    result = run_on_moa(cfg, args.model, lambda moa: run_layout_bench(
        moa, load_prompts(args.prompts), layouts, progress=lambda line: print(line, file=sys.stderr, flush=True)))
    result["setup"]["model"] = args.model or "default"
    if args.json:
        print(json.dumps(result))
    else:
        from rich.console import Console

        Console().print(_table(result))
    return 0
