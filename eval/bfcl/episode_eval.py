"""`moa-stream eval --dataset bfcl-multi-turn[-CATEGORY]:N --episodes`: whole episodes per agent format.

Each (case, format, system) is one episode played end to end by one agent (eval/bfcl/episodes.py; `moa`: the
aggregator writes each step after the config's proposers wrote theirs), written as one JSON
line as it finishes, so an interrupted run resumes. The summary gives per format: episode accuracy (BFCL's
multi_turn_checker), turn accuracy (BFCL's checks pass through the turn, over turns with ground-truth calls),
how often the agent called nothing on turns whose ground truth has no call (it asked or explained instead),
tokens computed and decoded per step (the prefix apart) and TTFT per step, each with a 95% CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from moa_stream import AGENT_FORMATS, ConfigError, MoA, MoAConfig, MoAStreamError
from moa_stream.tools import BfclCase

from ..progress import progress_bar
from ..report import Estimate, estimate
from ..rows import drop_torn_tail
from .episodes import EpisodeResult, TurnRow, play
from .next_step_eval import parse_list, pick_cases
from .tables import Column, markdown_table, rich_table

SYSTEMS = ("single", "moa")


@dataclass
class EpisodeRow(EpisodeResult):
    """A played episode as stored: the result, its dataset and system, or why it could not run."""

    dataset: str = ""
    system: str = "single"
    error: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EpisodeRow:
        """A row from its JSON object (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        turn_known = {f.name for f in fields(TurnRow)}
        values = {k: v for k, v in doc.items() if k in known}
        values["turns"] = [TurnRow(**{k: v for k, v in t.items() if k in turn_known}) for t in doc.get("turns", [])]
        return cls(**values)

    @property
    def key(self) -> tuple[str, str, str]:
        """What a resumed run skips: (case, format, system)."""
        return self.case_id, self.format, self.system

    def step_tokens(self) -> list[int]:
        """Tokens computed per step, the prefix's computed part taken out of the first step."""
        out = [n for t in self.turns for n in t.step_prefill]
        if out:
            out[0] -= self.prefix_computed
        return out


def read_episodes(path: Path) -> list[EpisodeRow]:
    """Every complete row of a results file (a torn last line is skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(EpisodeRow.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


@dataclass
class EpisodeSummary:
    """One (format, system) line of the report."""

    format: str
    system: str
    episodes: int
    episode_accuracy: Estimate
    turn_accuracy: Estimate
    asked_when_no_call: Estimate
    tokens_per_step: Estimate
    decode_per_step: Estimate
    steps_per_turn: Estimate
    ttft_s: Estimate
    prefix_tokens: Estimate
    errors: int


def summarize(rows: Sequence[EpisodeRow]) -> list[EpisodeSummary]:
    """Per (format, system) summaries, in the order they first appear."""
    groups: dict[tuple[str, str], list[EpisodeRow]] = {}
    for r in rows:
        groups.setdefault((r.format, r.system), []).append(r)
    out = []
    for (fmt, system), rs in groups.items():
        ok = [r for r in rs if not r.error]
        turns = [t for r in ok for t in r.turns]
        steps = sum(t.steps for t in turns)
        out.append(EpisodeSummary(
            fmt, system, len(ok), estimate([float(r.valid) for r in ok], proportion=True),
            estimate([None if t.passed is None else float(t.passed) for t in turns], proportion=True),
            estimate([None if t.asked is None else float(t.asked) for t in turns], proportion=True),
            estimate([n for r in ok for n in r.step_tokens()]),
            estimate([t.decode_tokens / t.steps for t in turns if t.steps]) if steps else estimate([]),
            estimate([t.steps for t in turns]), estimate([t.ttft_s for t in turns]),
            estimate([r.prefix_tokens for r in ok]), len(rs) - len(ok)))
    return out


def _columns() -> list[Column]:
    def mean(e: Estimate) -> str:
        return "-" if e.mean is None else f"{e.mean:.0f}"

    return [("format", lambda s: s.format), ("system", lambda s: s.system), ("episodes", lambda s: str(s.episodes)),
            ("episode accuracy [95% CI]", lambda s: str(s.episode_accuracy)),
            ("turn accuracy [95% CI]", lambda s: str(s.turn_accuracy)),
            ("no call where none is due [95% CI]", lambda s: str(s.asked_when_no_call)),
            ("tokens computed / step [95% CI]", lambda s: str(s.tokens_per_step)),
            ("decoded / step", lambda s: str(s.decode_per_step)), ("steps / turn", lambda s: str(s.steps_per_turn)),
            ("TTFT s / turn", lambda s: str(s.ttft_s)), ("prefix tokens", lambda s: mean(s.prefix_tokens)),
            ("errors", lambda s: str(s.errors))]


NOTE = ("\nEpisode accuracy: BFCL's multi_turn_checker (state and response checks after every turn) on the whole "
        "episode. Turn accuracy: the same checker passes through that turn, over turns with ground-truth calls (a "
        "turn after a failed one usually fails too). No call where none is due: turns whose ground truth has no "
        "call (miss_func before the reveal, miss_param) where the agent called nothing. Tokens computed per step: "
        "the step's cue and events (and its turn's user message on the turn's first step); the prefix is apart. "
        "CIs: Wilson for proportions, normal for means; turns and steps of one episode are not independent.\n")


async def run(moa: MoA, cases: Sequence[tuple[str, BfclCase]], formats: Sequence[str], systems: Sequence[str],
              out: Path, max_tokens: int, progress: bool = True) -> int:
    """Play every (case, format, system) not yet in `out`, appending a row as each finishes; returns rows
    written."""
    cfg = moa.config
    engine = moa.engines[cfg.aggregator.backend]
    if "moa" in systems and any(moa.engines[p.backend] is not engine for p in cfg.layers[-1]):
        raise ConfigError("a MoA episode forks one sequence: every proposer must use the aggregator's engine")
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(out)
    done = {r.key for r in read_episodes(out)}
    todo = [(d, c, f, sy) for d, c in cases for f in formats for sy in systems if (c.id, f, sy) not in done]
    written = 0
    with progress_bar(len(todo), progress) as bar, out.open("a", encoding="utf-8") as f:
        for dataset, case, fmt, system in todo:
            bar.show(f"{case.id} {fmt} {system}")
            try:
                result = await play(engine, case, fmt, max_tokens=max_tokens,
                                    proposers=cfg.layers[-1] if system == "moa" else ())
                row = EpisodeRow(**{k.name: getattr(result, k.name) for k in fields(EpisodeResult)}, dataset=dataset,
                                 system=system)
            except MoAStreamError as exc:
                row = EpisodeRow(case.id, fmt, False, None, None, 0, 0, [], 0.0, dataset, system, error=str(exc))
            f.write(json.dumps(asdict(row)) + "\n")
            f.flush()  # a row on disk is an episode a resumed run skips
            written += 1
            bar.advance()
    return written


def main(args: argparse.Namespace, datasets: Sequence[tuple[str, int | None]]) -> int:
    """Run (or resume) the episode eval, then write summary.md and summary.json beside rows.jsonl."""
    from rich.console import Console

    console = Console(stderr=True)
    out = Path(args.out)
    if not args.report_only:
        try:
            formats = parse_list(args.formats, list(AGENT_FORMATS), "--formats")
            systems = parse_list(args.systems or "single", SYSTEMS, "--systems with --episodes")
            cases = [(name, c) for name, n in datasets for c in pick_cases(name, n, args.seed)]
            cfg = MoAConfig.load(args.config)
        except (MoAStreamError, ValueError) as exc:
            console.print(f"moa-stream eval: {exc}")
            return 2

        async def go() -> int:
            moa = MoA.from_config(cfg, model=args.model)
            try:
                return await run(moa, cases, formats, systems, out / "rows.jsonl", args.call_tokens,
                                 progress=not args.no_progress)
            finally:
                await moa.aclose()

        try:
            written = asyncio.run(go())
        except ConfigError as exc:
            console.print(f"moa-stream eval: {exc}")
            return 2
        console.print(f"{written} new rows in {out / 'rows.jsonl'}")
    return write_report(out, console)


def write_report(out: Path, console: Any) -> int:
    """Summarise `out`/rows.jsonl: print the table, write summary.md and summary.json beside it."""
    from rich.console import Console

    rows = read_episodes(out / "rows.jsonl")
    if not rows:
        console.print(f"moa-stream eval: no results in {out / 'rows.jsonl'}")
        return 1
    summaries = summarize(rows)
    Console().print(rich_table(summaries, _columns(), f"BFCL whole episodes by format ({len(rows)} episodes)"))
    (out / "summary.md").write_text(markdown_table(summaries, _columns()) + NOTE, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2), encoding="utf-8")
    console.print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return 0
