"""`moa-stream eval`: answer dataset samples with every system, score them, report quality against TTFT."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

DEFAULT_SYSTEMS = "single,classic,staircase-reprefill@16,staircase@8,staircase@16,staircase@32"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `eval`'s options."""
    p.add_argument("--dataset", action="append", metavar="NAME[:N]",
                   help="nq-open, mmlu, openbookqa, truthfulqa, asdiv, mt-bench or a .jsonl file, with an optional "
                        "sample count; repeatable (default: nq-open:20 and mmlu:20)")
    p.add_argument("--limit", type=int, default=None, help="samples per dataset when NAME has no :N")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic subset (0)")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated systems ({DEFAULT_SYSTEMS})")
    p.add_argument("--out", default="eval/results/latest", help="results folder; an existing rows.jsonl is resumed")
    p.add_argument("--config", default=None, help="MoA config file (YAML/TOML)")
    p.add_argument("--model", default=None, help="model of the default backend")
    p.add_argument("--max-tokens", type=int, default=48, help="answer tokens at most (48)")
    p.add_argument("--proposer-tokens", type=int, default=None, help="cap every proposer's max_tokens")
    p.add_argument("--judge", choices=("none", "self"), default="none",
                   help="grade open-ended answers with the config's aggregator model (self) or not (none)")
    p.add_argument("--report-only", action="store_true", help="only summarise an existing rows.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _datasets(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    out = []
    for spec in args.dataset or ["nq-open:20", "mmlu:20"]:
        name, _, n = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
        out.append((name, int(n) if n else args.limit))
    return out


def main(args: argparse.Namespace) -> int:
    """Run (or resume) the evaluation, then write summary.md, summary.json and plot.png beside rows.jsonl."""
    from rich.console import Console

    from moa_stream import MoA, MoAConfig

    from . import datasets, report, runner
    from .judge import Judge

    console = Console(stderr=True)
    out = Path(args.out)
    rows_path = out / "rows.jsonl"
    if not args.report_only:
        try:
            systems = runner.parse_systems(args.systems)
            samples = [s for name, n in _datasets(args) for s in datasets.load(name, n, args.seed)]
        except (ValueError, datasets.DatasetError) as exc:
            console.print(f"moa-stream eval: {exc}")
            return 2
        cfg = MoAConfig.load(args.config)
        if args.proposer_tokens:
            cfg = cfg.model_copy(update={"layers": [[a.model_copy(update={"max_tokens": args.proposer_tokens})
                                                     for a in layer] for layer in cfg.layers]})

        async def go() -> int:
            moa = MoA.from_config(cfg, model=args.model)
            try:
                judge = Judge(moa) if args.judge == "self" else None
                return await runner.run(moa, samples, systems, rows_path, args.max_tokens, judge,
                                        progress=not args.no_progress)
            finally:
                await moa.aclose()

        written = asyncio.run(go())
        console.print(f"{written} new rows in {rows_path}")
    rows = runner.read_rows(rows_path)
    if not rows:
        console.print(f"moa-stream eval: no results in {rows_path}")
        return 1
    summaries = report.summarize(rows)
    Console().print(report.table(summaries, title=f"quality vs TTFT ({len(rows)} rows)"))
    (out / "summary.md").write_text(report.markdown(summaries), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(report.as_json(summaries), indent=2), encoding="utf-8")
    report.plot(summaries, out / "plot.png")
    console.print(f"wrote {out / 'summary.md'}, {out / 'summary.json'} and {out / 'plot.png'}")
    return 0
