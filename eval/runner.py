"""Run samples through systems (modes and chunk sizes), one JSONL row each, resuming where a run stopped."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moa_stream import MODES, MoA, MoAError, Mode

from .datasets import Sample
from .judge import Judge
from .scorers import score


@dataclass(frozen=True)
class System:
    """A way of answering: a mode and, for the staircase layouts, a chunk size in tokens."""

    mode: Mode
    chunk: int | None = None

    @property
    def name(self) -> str:
        """'staircase@16', 'classic', ..."""
        return f"{self.mode}@{self.chunk}" if self.chunk else self.mode


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


@dataclass
class Row:
    """One (sample, system) result: the JSONL schema."""

    sample_id: str
    dataset: str
    kind: str
    system: str
    mode: str
    chunk: int | None
    answer: str
    score: float | None
    scores: dict[str, float]
    ttft_s: float | None
    total_s: float
    answer_tokens: int
    prefill_computed: int
    prefill_reused: int
    chunks_ingested: int
    error: str | None = None


def done_keys(path: Path) -> set[tuple[str, str]]:
    """(sample_id, system) pairs already in a results file (a torn last line is ignored)."""
    keys: set[tuple[str, str]] = set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            keys.add((r["sample_id"], r["system"]))
    return keys


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a results file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


async def answer(moa: MoA, sample: Sample, system: System, max_tokens: int | None) -> Row:
    """Run one sample through one system and score it."""
    staircase = None
    if system.chunk:
        staircase = moa.config.staircase.model_copy(update={"first_chunk_tokens": system.chunk,
                                                            "chunk_tokens": system.chunk})
    t0 = time.perf_counter()
    try:
        result = await moa.run(sample.prompt, mode=system.mode, staircase=staircase, max_tokens=max_tokens)
    except MoAError as exc:
        return Row(sample.id, sample.dataset, sample.kind, system.name, system.mode, system.chunk, "", 0.0, {},
                   None, time.perf_counter() - t0, 0, 0, 0, 0, error=str(exc))
    m = result.metrics
    scores = score(sample, result.answer)
    return Row(sample.id, sample.dataset, sample.kind, system.name, system.mode, system.chunk, result.answer,
               scores.get("score"), scores, m.ttft_s, m.total_s, m.answer_tokens, m.prefill_computed,
               m.prefill_reused, m.chunks_ingested)


async def run(moa: MoA, samples: Sequence[Sample], systems: Sequence[System], out: Path,
              max_tokens: int | None = None, judge: Judge | None = None, progress: bool = True) -> int:
    """Answer every (sample, system) pair not yet in `out`, appending rows as they finish; returns rows written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    todo = [(s, sy) for s in samples for sy in systems if (s.id, sy.name) not in done]
    written = 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, disable=not progress, transient=False) as bar, out.open("a", encoding="utf-8") as f:
        task = bar.add_task("", total=len(todo))
        classic_answers = {r["sample_id"]: r["answer"] for r in read_rows(out) if r["mode"] == "classic"}
        for sample, system in todo:
            bar.update(task, description=f"{sample.id} {system.name}")
            row = await answer(moa, sample, system, max_tokens)
            if system.mode == "classic":
                classic_answers[sample.id] = row.answer
            if judge is not None and sample.kind == "open" and not row.error:
                grade = await judge.grade(sample.prompt, row.answer, sample.reference)
                if grade is not None:
                    row.scores["judge_grade"] = grade
                    row.score = grade
                base = classic_answers.get(sample.id)
                if base is not None and system.mode != "classic":
                    win = await judge.pairwise(sample.prompt, row.answer, base)
                    if win is not None:
                        row.scores["judge_win_vs_classic"] = win
            f.write(json.dumps(asdict(row)) + "\n")
            f.flush()  # a row on disk is a row a resumed run will skip
            written += 1
            bar.advance(task)
    return written
