"""`moa-stream eval --dataset bfcl-multi-turn[-CATEGORY]:N --episodes`: whole episodes per agent format.

Each (case, format, system) is one episode played end to end by one agent (eval/bfcl/episodes.py; `moa`: the
aggregator writes each step after the config's proposers wrote theirs), written as one JSON
line as it finishes, so an interrupted run resumes. The summary gives per format: episode accuracy (BFCL's
multi_turn_checker), turn accuracy (BFCL's checks pass through the turn, over turns with ground-truth calls),
how often the agent called nothing on turns whose ground truth has no call (it asked or explained instead),
tokens computed and decoded per step (the prefix apart) and TTFT per step, each with a 95% CI.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from moa_stream import MoA
from moa_stream.tools import BfclCase

from ..report import Estimate, estimate
from .driver import BfclEval, Keyed, read_rows, row_from_json, run_rows, same_engine
from .episodes import EpisodeResult, TurnRow, play
from .tables import Column, markdown_table, rich_table

SYSTEMS = ("single", "moa")


@dataclass
class EpisodeRow(EpisodeResult, Keyed):
    """A played episode as stored: the result, its dataset and system, or why it could not run."""

    dataset: str = ""
    system: str = "single"
    error: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EpisodeRow:
        """A row from its JSON object (unknown keys ignored)."""
        return row_from_json(cls, doc, "turns", TurnRow)

    def step_tokens(self) -> list[int]:
        """Tokens computed per step, the prefix's computed part taken out of the first step."""
        out = [n for t in self.turns for n in t.step_prefill]
        if out:
            out[0] -= self.prefix_computed
        return out


def read_episodes(path: Path) -> list[EpisodeRow]:
    """Every complete row of a results file (a torn last line is skipped)."""
    return read_rows(path, EpisodeRow.from_dict)


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
    same_engine(moa, systems, "a MoA episode")
    cfg = moa.config
    engine = moa.engines[cfg.aggregator.backend]

    async def play_one(dataset: str, case: BfclCase, fmt: str, system: str) -> EpisodeRow:
        result = await play(engine, case, fmt, max_tokens=max_tokens,
                            proposers=cfg.layers[-1] if system == "moa" else ())
        return EpisodeRow(**{k.name: getattr(result, k.name) for k in fields(EpisodeResult)}, dataset=dataset,
                          system=system)

    def failed(dataset: str, case: BfclCase, fmt: str, system: str, why: str) -> EpisodeRow:
        return EpisodeRow(case.id, fmt, False, None, None, 0, 0, [], 0.0, dataset, system, error=why)

    done = {r.key for r in read_episodes(out)}
    return await run_rows(cases, formats, systems, out, done, play_one, failed, progress)


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


EPISODES = BfclEval("--systems with --episodes", SYSTEMS, run, write_report)
main = EPISODES.main
