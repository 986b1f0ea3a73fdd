"""The results file: one JSON line per (sample, system) as a typed `Row`, written as rows finish and read back.

Reading is tolerant: a torn last line (an interrupted run) is skipped, and rows written before a field existed
get its default, so every results folder this harness ever wrote still reads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LaterTurn:
    """A follow-up turn of a multi-turn sample, answered in the same conversation (agents keep their KV)."""

    prompt: str
    answer: str
    ttft_s: float | None
    total_s: float
    answer_tokens: int
    prefill_computed: int
    prefill_reused: int
    prefill_carried: int


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
    prefill_carried: int = 0  # context tokens an earlier turn's live sequence already held (multi-turn)
    later_turns: list[LaterTurn] = field(default_factory=list)  # MT-Bench's second turn, same conversation
    judge_replies: list[str] = field(default_factory=list)  # the judge's raw replies, to audit a weak judge
    rep4: float | None = None  # degeneration of the answer: repeated word 4-gram fraction (0: no loop)
    distinct2: float | None = None  # distinct word bigrams / all bigrams (1: no repetition)
    order: int | None = None  # the system's place in its sample's randomised order (0 = ran first)
    na: str | None = None  # why the measure is not available on this run (an engine that cannot score): "n/a"

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Row:
        """A row from its JSON object; fields added after a file was written take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["later_turns"] = [LaterTurn(**t) for t in doc.get("later_turns", [])]
        return cls(**values)

    def to_json(self) -> str:
        """The row as one JSON line (no newline)."""
        return json.dumps(asdict(self))


def read_rows(path: Path) -> list[Row]:
    """Every complete row of a results file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append(Row.from_dict(doc))
    return rows


def write_rows(path: Path, rows: list[Row]) -> None:
    """Replace a results file with `rows`, atomically (a crash leaves the old file whole)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r.to_json() + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def done_keys(path: Path) -> set[tuple[str, str]]:
    """(sample_id, system) pairs already in a results file (a torn last line is ignored)."""
    return {(r.sample_id, r.system) for r in read_rows(path)}


def drop_torn_tail(path: Path) -> None:
    """Cut a last line an interrupted run left half-written, so the next row starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
