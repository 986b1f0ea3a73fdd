"""`moa-stream eval`: answer dataset samples with every system, score them, report quality against TTFT."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
from pathlib import Path

from moa_stream.cli import positive_int

DEFAULT_SYSTEMS = ("single,classic,staircase-reprefill@16,blocks@4,blocks@8,blocks@16,blocks@32,"
                   "staircase@4,staircase@8,staircase@16,staircase@32")
_Z = 1.959964  # two-sided 95%


def samples_for_ci_width(width: float) -> int:
    """Samples for a 95% CI of total `width` on an accuracy near 0.5 (the widest case): n = (z / width)^2."""
    return math.ceil((_Z / width) ** 2)


def _width(text: str) -> float:
    try:
        w = float(text)
    except ValueError:
        w = 0.0
    if not 0.0 < w < 1.0:
        raise argparse.ArgumentTypeError(f"wants a CI width in (0, 1), got {text!r}")
    return w


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register `eval`'s options."""
    p.add_argument("--dataset", action="append", metavar="NAME[:N]",
                   help="nq-open, mmlu, openbookqa, truthfulqa, asdiv, boolq, mt-bench or a .jsonl file, with "
                        "an optional sample count; repeatable (default: nq-open:20 and mmlu:20)")
    p.add_argument("--limit", type=positive_int, default=None, help="samples per dataset when NAME has no :N")
    p.add_argument("--ci-width", type=_width, default=None, metavar="W",
                   help="samples per dataset (when NAME has no :N and no --limit) for a 95%% CI of total width W on "
                        "an accuracy near 0.5: n = (1.96/W)^2, e.g. 0.2 -> 97, 0.3 -> 43; paired differences "
                        "between systems are narrower when their answers agree")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the deterministic subset and of each sample's random system order (0)")
    p.add_argument("--systems", default=None, help=f"comma-separated systems (default: {DEFAULT_SYSTEMS}; for "
                   "bfcl-multi-turn: single)")
    p.add_argument("--out", default="eval/results/latest", help="results folder; an existing rows.jsonl is resumed")
    p.add_argument("--config", default=None, help="MoA config file (YAML/TOML)")
    p.add_argument("--model", default=None, help="model of the default backend")
    p.add_argument("--max-tokens", type=positive_int, default=48, help="answer tokens at most (48)")
    p.add_argument("--proposer-tokens", type=positive_int, default=None, help="cap every proposer's max_tokens")
    p.add_argument("--judge", default="none", metavar="none|self|CONFIG",
                   help="grade open-ended answers (1-10, and pairwise against classic with the order swapped): "
                        "with this config's aggregator model (self), with another MoA config's aggregator "
                        "(a YAML/TOML file, any backend), or not (none, the default)")
    p.add_argument("--judge-tokens", type=positive_int, default=128, help="tokens of each judge reply (128)")
    p.add_argument("--turns", type=int, choices=(1, 2), default=2,
                   help="turns of multi-turn samples (MT-Bench has 2) answered in one conversation (2)")
    p.add_argument("--no-loglik", action="store_true",
                   help="skip the option log-likelihood rows of multiple-choice samples (on by default)")
    p.add_argument("--formats", default="chat,thread,compact",
                   help="with --dataset bfcl-multi-turn[-CATEGORY]:N (the next-step eval of agent formats): the "
                        "formats to compare (chat,thread,compact); --systems is then single,moa")
    p.add_argument("--episodes", action="store_true",
                   help="with --dataset bfcl-multi-turn[-CATEGORY]:N: play each case end to end (the agent's own "
                        "calls executed, scored by BFCL's multi-turn checker) instead of predicting next steps")
    p.add_argument("--call-tokens", type=positive_int, default=128,
                   help="bfcl-multi-turn: tokens of each predicted call at most (128)")
    p.add_argument("--report-only", action="store_true", help="only summarise an existing rows.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _datasets(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    out = []
    fallback = args.limit or (samples_for_ci_width(args.ci_width) if args.ci_width else None)
    for spec in args.dataset or [f"nq-open:{fallback or 20}", f"mmlu:{fallback or 20}"]:
        name, _, n = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
        out.append((name, int(n) if n else fallback))
    return out


def main(args: argparse.Namespace) -> int:
    """Run (or resume) the evaluation, then write summary.md, summary.json and plot.png beside rows.jsonl."""
    from .bfcl import next_step_eval as bfcl_next_step

    if any(bfcl_next_step.is_bfcl(spec.split(":")[0]) for spec in getattr(args, "dataset", None) or []):
        if getattr(args, "episodes", False):
            from .bfcl import episode_eval

            return episode_eval.main(args, _datasets(args))
        return bfcl_next_step.main(args, _datasets(args))
    from rich.console import Console

    from moa_stream import MoA, MoAConfig, MoAStreamError

    from . import datasets, report, runner
    from .judge import Judge
    from .rows import read_rows, write_rows

    console = Console(stderr=True)
    out = Path(args.out)
    rows_path = out / "rows.jsonl"
    if not args.report_only:
        try:
            systems = runner.parse_systems(args.systems or DEFAULT_SYSTEMS)
            per_dataset = [datasets.load(name, n, args.seed) for name, n in _datasets(args)]
            # Round robin over the datasets, so a run stopped early (and resumed later) covers each of them.
            samples = [s for group in itertools.zip_longest(*per_dataset) for s in group if s is not None]
            cfg = MoAConfig.load(args.config)
            judge_cfg = MoAConfig.load(args.judge) if args.judge not in ("none", "self") else None
        except (MoAStreamError, ValueError) as exc:  # DatasetError, ConfigError; a bad --systems spec
            console.print(f"moa-stream eval: {exc}")
            return 2
        if args.proposer_tokens:
            cfg = cfg.model_copy(update={"layers": [[a.model_copy(update={"max_tokens": args.proposer_tokens})
                                                     for a in layer] for layer in cfg.layers]})

        async def go() -> int:
            moa = MoA.from_config(cfg, model=args.model)
            judge_moa = None
            try:
                judge = None
                if args.judge == "self":
                    judge = Judge(moa, args.judge_tokens)
                elif judge_cfg is not None:
                    judge_moa = MoA.from_config(judge_cfg)
                    judge = Judge(judge_moa, args.judge_tokens)
                return await runner.run(moa, samples, systems, rows_path, args.max_tokens, judge,
                                        progress=not args.no_progress, turns=args.turns,
                                        with_loglik=not args.no_loglik, seed=args.seed)
            finally:
                await moa.aclose()
                if judge_moa is not None:
                    await judge_moa.aclose()

        written = asyncio.run(go())
        console.print(f"{written} new rows in {rows_path}")
    rows = read_rows(rows_path)
    if not rows:
        console.print(f"moa-stream eval: no results in {rows_path}")
        return 1
    # Rows keep the answers, so a fixed scorer re-marks old runs without re-running them.
    known = [d for d in dict.fromkeys(r.dataset for r in rows) if d in datasets.LOADERS]
    if runner.rescore(rows, [s for d in known for s in datasets.load(d)]):
        write_rows(rows_path, rows)
    summaries = report.summarize(rows)
    Console().print(report.table(summaries, title=f"quality vs TTFT ({len(rows)} rows)"))
    verdict = report.verdict(rows)
    Console().print(verdict)
    (out / "summary.md").write_text(report.markdown(summaries) + "\n" + verdict, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(report.as_json(summaries), indent=2), encoding="utf-8")
    report.plot(summaries, out / "plot.png")
    console.print(f"wrote {out / 'summary.md'}, {out / 'summary.json'} and {out / 'plot.png'}")
    return 0
