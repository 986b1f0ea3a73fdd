"""What both BFCL evals (next step, whole episodes) share: the case subset, the resumable loop over (case, format,
system) that appends a JSON row as each finishes, and the command's flow (check, run, report)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from eval.bfcl.traces import load_cases
from moa_stream import AGENT_FORMATS, ConfigError, MoA, MoAConfig, MoAStreamError
from moa_stream.tools import BfclCase

from ..progress import progress_bar
from ..rows import drop_torn_tail

DATASET = "bfcl-multi-turn"
T = TypeVar("T")


class Row(Protocol):
    """A stored (case, format, system) row."""

    @property
    def key(self) -> tuple[str, str, str]: ...


class Keyed:
    """A row's key from its fields: what a resumed run skips."""

    case_id: str
    format: str
    system: str

    @property
    def key(self) -> tuple[str, str, str]:
        """(case, format, system)."""
        return self.case_id, self.format, self.system


def _known(cls: type, doc: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


def row_from_json(cls: type[T], doc: dict[str, Any], nested: str, item: type) -> T:
    """A row dataclass from its JSON object, its list `nested` made of `item` dataclasses (unknown keys ignored)."""
    values = _known(cls, doc)
    values[nested] = [item(**_known(item, x)) for x in doc.get(nested, [])]
    return cls(**values)


def category(name: str) -> str:
    """The BFCL multi-turn category a dataset name picks (base unless it says `bfcl-multi-turn-long_context`)."""
    return name.removeprefix(DATASET).lstrip("-") or "base"


def pick_cases(name: str, limit: int | None, seed: int) -> list[BfclCase]:
    """A deterministic random subset of `limit` cases with `seed`, in dataset order (as the other datasets)."""
    cases = load_cases(category(name))
    if limit is None or limit >= len(cases):
        return cases
    return [cases[i] for i in sorted(random.Random(seed).sample(range(len(cases)), limit))]


def parse_list(spec: str, known: Sequence[str], what: str) -> list[str]:
    """A comma-separated list, each item checked against `known`."""
    items = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in items if p not in known]
    if bad or not items:
        raise ConfigError(f"{what} must be a comma-separated list of {', '.join(known)}; got {spec!r}")
    return items


def read_rows(path: Path, parse: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """Every complete row of a results file (a torn last line is skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(parse(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


PlayOne = Callable[[str, BfclCase, str, str], Awaitable[Row]]  # (dataset, case, format, system) -> its row
Failed = Callable[[str, BfclCase, str, str, str], Row]  # the same and why -> a row that says so


def same_engine(moa: MoA, systems: Sequence[str], what: str) -> None:
    """A MoA that forks one sequence needs every proposer on the aggregator's engine."""
    engine = moa.engines[moa.config.aggregator.backend]
    if "moa" in systems and any(moa.engines[p.backend] is not engine for p in moa.config.layers[-1]):
        raise ConfigError(f"{what} forks one sequence: every proposer must use the aggregator's engine")


async def run_rows(cases: Sequence[tuple[str, BfclCase]], formats: Sequence[str], systems: Sequence[str], out: Path,
                   done: set[tuple[str, str, str]], play: PlayOne, failed: Failed, progress: bool) -> int:
    """Every (case, format, system) not in `done`, a row appended as each finishes; returns rows written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(out)
    todo = [(d, c, f, sy) for d, c in cases for f in formats for sy in systems if (c.id, f, sy) not in done]
    written = 0
    with progress_bar(len(todo), progress) as bar, out.open("a", encoding="utf-8") as f:
        for dataset, case, fmt, system in todo:
            bar.show(f"{case.id} {fmt} {system}")
            try:
                row = await play(dataset, case, fmt, system)
            except MoAStreamError as exc:
                row = failed(dataset, case, fmt, system, str(exc))
            f.write(json.dumps(asdict(row)) + "\n")  # type: ignore[call-overload]
            f.flush()  # a row on disk is an episode a resumed run skips
            written += 1
            bar.advance()
    return written


@dataclass(frozen=True)
class BfclEval:
    """One BFCL eval as the command drives it: its systems, its run over the cases, its report."""

    name: str  # for messages: "--systems with --episodes"
    systems: tuple[str, ...]
    run: Callable[[MoA, list[tuple[str, BfclCase]], list[str], list[str], Path, int, bool], Awaitable[int]]
    write_report: Callable[[Path, Any], int]

    def main(self, args: argparse.Namespace, datasets: Sequence[tuple[str, int | None]]) -> int:
        """Run (or resume) the eval, then write its report beside rows.jsonl; 2 for bad options."""
        from rich.console import Console

        console = Console(stderr=True)
        out = Path(args.out)
        rows_path = out / "rows.jsonl"
        if not args.report_only:
            try:
                formats = parse_list(args.formats, list(AGENT_FORMATS), "--formats")
                systems = parse_list(args.systems or "single", self.systems, self.name)
                cases = [(name, c) for name, n in datasets for c in pick_cases(name, n, args.seed)]
                cfg = MoAConfig.load(args.config)
            except (MoAStreamError, ValueError) as exc:
                console.print(f"moa-stream eval: {exc}")
                return 2

            async def go() -> int:
                moa = MoA.from_config(cfg, model=args.model)
                try:
                    return await self.run(moa, cases, formats, systems, rows_path, args.call_tokens,
                                          not args.no_progress)
                finally:
                    await moa.aclose()

            try:
                written = asyncio.run(go())
            except ConfigError as exc:
                console.print(f"moa-stream eval: {exc}")
                return 2
            console.print(f"{written} new rows in {rows_path}")
        return self.write_report(out, console)
