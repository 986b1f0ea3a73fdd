"""`moa-stream bench ttft`: TTFT and total time of every MoA mode, or of classic and staircase over L layers
(eval/bench/ttft.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from moa_stream.cli import positive_int

from .options import add_moa_arguments, run_on_moa


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench ttft`."""
    add_moa_arguments(p)
    p.add_argument("--proposer-tokens", type=positive_int, default=256, metavar="N",
                   help="tokens every proposer writes (256)")
    p.add_argument("--answer-tokens", type=positive_int, default=64, metavar="N", help="answer tokens at most (64)")
    p.add_argument("--first-chunk", type=positive_int, default=None, metavar="N", help="first chunk size in tokens")
    p.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                   help="chunk size in tokens (the first one too, unless --first-chunk)")
    p.add_argument("--repeats", type=positive_int, default=1, metavar="N", help="runs per mode; the median counts")
    p.add_argument("--question", default=None, help="the question to answer")
    p.add_argument("--peer", action="store_true",
                   help="also run classic MoA as a client of llama.cpp's server on the same GGUF (peer_classic)")
    p.add_argument("--layers", type=positive_int, default=1, metavar="L",
                   help="proposer layers (the config's last one repeated); above 1, only classic and staircase run")


def _ttft_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="TTFT per mode (seconds)")
    cols = ("mode", "ttft_s", "total_s", "answer tokens", "finish", "x classic @ equal length", "aggregator prefill "
            "computed", "chunks")
    for col in cols:
        table.add_column(col, justify="left" if col in ("mode", "finish") else "right")
    for mode, row in result.items():
        if not isinstance(row, dict) or mode in ("setup", "peer_classic"):
            continue
        ratio = row.get("total_ratio_vs_classic")
        short = " [red](short)[/red]" if row.get("short_answer") else ""
        table.add_row(mode, f"{row['ttft_s']:.2f}" if row["ttft_s"] is not None else "-", f"{row['total_s']:.2f}",
                      f"{row['answer_tokens']}{short}", str(row["finish_reason"]),
                      f"{ratio:.2f} ({row['equal_length_tokens']} tok)" if ratio is not None else "-",
                      str(row["aggregator_prefill_computed"]), str(row["chunks_ingested"]))
    return table


def main(args: argparse.Namespace) -> int:
    """Run `bench ttft` and print its JSON or table."""

    from eval.bench.ttft import DEFAULT_QUESTION, bench_config, layered, run_ttft_bench
    from moa_stream import MoAConfig

    cfg = MoAConfig.load(args.config)
    cfg = bench_config(layered(cfg, args.layers) if args.layers > 1 else cfg, args.proposer_tokens, args.answer_tokens)
    cfg = cfg.model_copy(update={"staircase": cfg.staircase.with_chunk(args.chunk, first=args.first_chunk)})

    result = run_on_moa(cfg, args.model, lambda moa: run_ttft_bench(
        moa, args.question or DEFAULT_QUESTION, repeats=args.repeats, peer=args.peer, model=args.model,
        modes=["classic", "staircase"] if args.layers > 1 else None))
    if args.json:
        print(json.dumps(result))
    else:
        from rich.console import Console

        console = Console()
        console.print(_ttft_table(result))
        stair = result["staircase"]
        if args.layers > 1 and "ttft_ratio_vs_classic" in stair:
            console.print(f"{args.layers} proposer layers: staircase TTFT = {stair['ttft_ratio_vs_classic']:.3f} x "
                          "classic (target <= 0.1)")
        if "ttft_ratio_vs_classic" in stair and "ttft_ratio_vs_single" in stair:
            console.print(f"staircase ({stair['layout']}) TTFT = {stair['ttft_ratio_vs_classic']:.3f} x classic "
                          f"(target <= 0.07), {stair['ttft_ratio_vs_single']:.2f} x single (target <= 3); total "
                          f"at equal length {stair['total_ratio_vs_classic']:.2f} x classic (target <= 1)")
        if result.get("staircase_total_vs_single") is not None:
            console.print(f"staircase total at equal length = {result['staircase_total_vs_single']:.2f} x single "
                          "(target <= 2.5)")
        peer = result.get("peer_classic")
        if peer is not None:
            console.print(f"peer (classic MoA on llama.cpp's server): TTFT {peer['ttft_s']:.2f} s, total "
                          f"{peer['total_s']:.2f} s; classic TTFT = {result['classic_vs_peer_ttft']:.2f} x peer "
                          f"(target <= 0.7), staircase = {result['staircase_vs_peer_ttft']:.3f} x peer "
                          "(target <= 0.05)")
        for mode, row in result.items():
            if isinstance(row, dict) and mode != "setup" and row.get("short_answer"):
                console.print(f"[red]{mode}: answer is {row['answer_fraction_of_classic']:.0%} of classic's "
                              f"length (< {result['setup']['short_answer_fraction']:.0%}): not a complete answer[/red]")
    return 0
