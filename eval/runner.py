"""Run samples through systems (modes and chunk sizes), one JSONL row each, resuming where a run stopped."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moa_stream import MODES, Metrics, MoA, MoAError, Mode, StaircaseConfig

from .datasets import Sample
from .judge import Judge
from .rows import LaterTurn, Row, done_keys, drop_torn_tail, read_rows
from .scorers import score

__all__ = ["System", "answer", "parse_systems", "read_rows", "rescore", "run"]


@dataclass(frozen=True)
class System:
    """A way of answering: a mode and, for the staircase layouts, a chunk size in tokens."""

    mode: Mode
    chunk: int | None = None

    @property
    def name(self) -> str:
        """'staircase@16', 'classic', ..."""
        return f"{self.mode}@{self.chunk}" if self.chunk else self.mode

    def knobs(self, base: StaircaseConfig) -> StaircaseConfig:
        """The staircase knobs this system runs with: `base` with its chunk size, if it names one."""
        return base.with_chunk(self.chunk) if self.chunk else base


def parse_systems(spec: str) -> list[System]:
    """'single,classic,staircase@8,staircase@16' -> Systems (a bare staircase mode keeps the config's chunks)."""
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        mode, _, chunk = part.partition("@")
        if mode not in MODES:
            raise ValueError(f"unknown system {part!r}: modes are {', '.join(MODES)}, e.g. staircase@16")
        if chunk and (not chunk.isdigit() or int(chunk) < 1 or mode not in ("staircase", "staircase-reprefill")):
            raise ValueError(f"{part!r}: a chunk size is a positive integer on a staircase mode")
        out.append(System(mode, int(chunk) if chunk else None))  # type: ignore[arg-type]
    if not out:
        raise ValueError("no systems given")
    return out


def _carried(m: Metrics) -> int:
    """Context tokens the agents did not compute this turn: their live sequences from an earlier turn."""
    return sum(max(0, a.context_tokens - a.prefill_computed - a.prefill_reused - a.decode_tokens)
               for a in m.agents.values())


def rescore(rows: list[Row], samples: Sequence[Sample]) -> int:
    """Recompute the automatic scores of rows whose sample is given (after a scorer fix); returns rows changed."""
    by_id = {s.id: s for s in samples}
    changed = 0
    for r in rows:
        sample = by_id.get(r.sample_id)
        if sample is None or sample.kind == "open" or r.error:
            continue
        new = score(sample, r.answer)
        if new.get("score") != r.score:
            changed += 1
        r.scores = {**r.scores, **new}
        r.score = new.get("score")
    return changed


async def answer(moa: MoA, sample: Sample, system: System, max_tokens: int | None, turns: int = 2) -> Row:
    """Run one sample through one system and score it; up to `turns` turns of a multi-turn sample."""
    staircase = system.knobs(moa.config.staircase)
    conv = moa.conversation(mode=system.mode)
    t0 = time.perf_counter()
    try:
        result = await conv.send(sample.prompt, staircase=staircase, max_tokens=max_tokens)
        later = []
        for prompt in sample.extra_turns[:max(0, turns - 1)]:
            r = await conv.send(prompt, staircase=staircase, max_tokens=max_tokens)
            lm = r.metrics
            later.append(LaterTurn(prompt, r.answer, lm.ttft_s, lm.total_s, lm.answer_tokens,
                                   lm.prefill_computed, lm.prefill_reused, _carried(lm)))
    except MoAError as exc:
        return Row(sample.id, sample.dataset, sample.kind, system.name, system.mode, system.chunk, "", 0.0, {},
                   None, time.perf_counter() - t0, 0, 0, 0, 0, error=str(exc))
    finally:
        await conv.close()
    m = result.metrics
    scores = score(sample, result.answer)
    return Row(sample.id, sample.dataset, sample.kind, system.name, system.mode, system.chunk, result.answer,
               scores.get("score"), scores, m.ttft_s, m.total_s, m.answer_tokens, m.prefill_computed,
               m.prefill_reused, m.chunks_ingested, prefill_carried=_carried(m), later_turns=later)


async def _judge(judge: Judge, sample: Sample, row: Row, baseline: Row | None) -> None:
    """Grade every turn of an open-ended answer (MT-Bench style) and compare it with classic's, both orders."""
    first_reply = len(judge.replies)
    grades = [await judge.grade(sample.prompt, row.answer, sample.reference)]
    history = [{"role": "user", "content": sample.prompt}, {"role": "assistant", "content": row.answer}]
    for t in row.later_turns:
        grades.append(await judge.grade(t.prompt, t.answer, history=history))
        history += [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}]
    valid = [g for g in grades if g is not None]
    if valid:
        row.scores["judge_grade"] = sum(valid) / len(valid)
        row.score = row.scores["judge_grade"]
    if baseline is not None and row.mode != "classic":
        win = await judge.pairwise(sample.prompt, row.answer, baseline.answer)
        if win is not None:
            row.scores["judge_win_vs_classic"] = win
    row.judge_replies = judge.replies[first_reply:]


async def run(moa: MoA, samples: Sequence[Sample], systems: Sequence[System], out: Path,
              max_tokens: int | None = None, judge: Judge | None = None, progress: bool = True,
              turns: int = 2) -> int:
    """Answer every (sample, system) pair not yet in `out`, appending rows as they finish; returns rows written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(out)
    done = done_keys(out)
    # Classic first within a sample, so the judge's pairwise comparison has its baseline ready.
    ordered = sorted(systems, key=lambda sy: sy.mode != "classic")
    todo = [(s, sy) for s in samples for sy in ordered if (s.id, sy.name) not in done]
    written = 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, disable=not progress, transient=False) as bar, out.open("a", encoding="utf-8") as f:
        task = bar.add_task("", total=len(todo))
        classic = {r.sample_id: r for r in read_rows(out) if r.mode == "classic" and not r.error}
        for sample, system in todo:
            bar.update(task, description=f"{sample.id} {system.name}")
            row = await answer(moa, sample, system, max_tokens, turns)
            if system.mode == "classic" and not row.error:
                classic[sample.id] = row
            if judge is not None and sample.kind == "open" and not row.error:
                await _judge(judge, sample, row, classic.get(sample.id))
            f.write(row.to_json() + "\n")
            f.flush()  # a row on disk is a row a resumed run will skip
            written += 1
            bar.advance(task)
    return written
