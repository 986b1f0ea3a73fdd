"""Run samples through systems (modes and chunk sizes), one JSONL row each, resuming where a run stopped.

Each sample's systems run in an order drawn from a seeded RNG, and every (system, sample) run gets a fresh
cache salt, so no system's prefill is served by blocks another system's run computed (each is measured cold).
Multiple-choice samples also get a log-likelihood row per system: the options scored from the aggregator's
context at the moment it starts answering (eval/option_scoring.py).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.option_scoring import score_options
from moa_stream import MODES, Metrics, MoA, MoAError, Mode, StaircaseConfig, UnsupportedFeatureError

from .datasets import Sample
from .judge import Judge
from .progress import progress_bar
from .rows import LaterTurn, Row, done_keys, drop_torn_tail, read_rows
from .scorers import degeneration, options, score

__all__ = ["LOGLIK", "System", "answer", "cold_salt", "loglik", "parse_systems", "read_rows", "rescore", "run"]

LOGLIK = "-loglik"  # suffix of a log-likelihood row's dataset and sample id ("mmlu-loglik", "mmlu/3-loglik")


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
        if chunk and (not chunk.isdigit() or int(chunk) < 1 or mode in ("single", "classic")):
            raise ValueError(f"{part!r}: a chunk size is a positive integer on a streaming mode (not single/classic)")
        out.append(System(mode, int(chunk) if chunk else None))  # type: ignore[arg-type]
    if not out:
        raise ValueError("no systems given")
    return out


def _carried(m: Metrics) -> int:
    """Context tokens the agents did not compute this turn: their live sequences from an earlier turn."""
    return sum(max(0, a.context_tokens - a.prefill_computed - a.prefill_reused - a.decode_tokens)
               for a in m.agents.values())


def rescore(rows: list[Row], samples: Sequence[Sample]) -> int:
    """Recompute the automatic scores of rows whose sample is given (after a scorer fix), and the degeneration
    scores rows lack; returns rows changed."""
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
    for r in rows:  # rows written before the degeneration scores existed get them
        if r.rep4 is None and r.distinct2 is None and r.answer and not r.dataset.endswith(LOGLIK):
            r.rep4, r.distinct2 = degeneration(r.answer)
            changed += 1
    return changed


def cold_salt(sample: Sample, system: System, what: str = "answer") -> str:
    """A cache salt no other run uses: this run's prefill can reuse only blocks it computed itself."""
    return f"eval:{sample.id}:{system.name}:{what}:{uuid.uuid4().hex}"


async def answer(moa: MoA, sample: Sample, system: System, max_tokens: int | None, turns: int = 2,
                 cache_salt: str | None = None) -> Row:
    """Run one sample through one system and score it; up to `turns` turns of a multi-turn sample."""
    staircase = system.knobs(moa.config.staircase)
    conv = moa.conversation(mode=system.mode, cache_salt=cache_salt)
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
    rep4, distinct2 = degeneration(result.answer)
    return Row(sample.id, sample.dataset, sample.kind, system.name, system.mode, system.chunk, result.answer,
               scores.get("score"), scores, m.ttft_s, m.total_s, m.answer_tokens, m.prefill_computed,
               m.prefill_reused, m.chunks_ingested, prefill_carried=_carried(m), later_turns=later, rep4=rep4,
               distinct2=distinct2)


async def loglik(moa: MoA, sample: Sample, system: System, cache_salt: str | None = None) -> Row:
    """A multiple-choice sample scored by option log-likelihood at the system's answer start (lm-eval style).

    Each option is scored as the answer's continuation "B. <text>"; the headline is accuracy of the summed
    log-probability's argmax, with the per-character argmax (acc_norm) and p(correct) = softmax over the options'
    log-likelihoods at the correct one (continuous, so far less noisy) beside it."""
    opts = options(sample.prompt)
    letters = [letter for letter, _ in opts]
    sid, dataset = sample.id + LOGLIK, sample.dataset + LOGLIK
    t0 = time.perf_counter()
    try:
        if sample.kind != "mc" or sample.answers[0] not in letters:
            raise ValueError(f"{sample.id}: not a multiple-choice sample with lettered options")
        r = await score_options(moa, sample.prompt, [f"{letter}. {text}" for letter, text in opts],
                                mode=system.mode, staircase=system.knobs(moa.config.staircase),
                                cache_salt=cache_salt)
    except UnsupportedFeatureError as exc:  # an engine without logits: reported as n/a, not as a failure
        return Row(sid, dataset, "mc", system.name, system.mode, system.chunk, "", None, {}, None,
                   time.perf_counter() - t0, 0, 0, 0, 0, na=str(exc))
    except (MoAError, ValueError) as exc:
        return Row(sid, dataset, "mc", system.name, system.mode, system.chunk, "", 0.0, {}, None,
                   time.perf_counter() - t0, 0, 0, 0, 0, error=str(exc))
    correct = letters.index(sample.answers[0])
    top = max(r.logprobs)
    p_correct = math.exp(r.logprobs[correct] - top) / sum(math.exp(lp - top) for lp in r.logprobs)
    acc = float(r.best == correct)
    scores = {"score": acc, "loglik_acc": acc, "loglik_acc_norm": float(r.best_normalized == correct),
              "p_correct": p_correct, "logprob_correct": r.logprobs[correct]}
    return Row(sid, dataset, "mc", system.name, system.mode, system.chunk, letters[r.best], acc, scores, r.start_s,
               r.total_s, 0, r.prefill_computed, r.prefill_reused, r.chunks_ingested)


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


def _plan(samples: Sequence[Sample], systems: Sequence[System], with_loglik: bool, judged: bool,
          seed: int) -> list[tuple[Sample, System, bool, int]]:
    """(sample, system, log-likelihood?, place in the sample's order) for every run, each sample's runs shuffled.

    The RNG is drawn for every sample, done or not, so a resumed run keeps the order the first one planned."""
    rng = random.Random(seed)
    plan = []
    for s in samples:
        runs = [(sy, False) for sy in systems] + [(sy, True) for sy in systems if with_loglik and s.kind == "mc"]
        rng.shuffle(runs)
        if judged:  # the judge compares with classic's answer: it must exist first
            runs.sort(key=lambda r: not (r[0].mode == "classic" and not r[1]))
        plan += [(s, sy, ll, i) for i, (sy, ll) in enumerate(runs)]
    return plan


async def run(moa: MoA, samples: Sequence[Sample], systems: Sequence[System], out: Path,
              max_tokens: int | None = None, judge: Judge | None = None, progress: bool = True,
              turns: int = 2, with_loglik: bool = True, seed: int = 0) -> int:
    """Answer every (sample, system) pair not yet in `out`, appending rows as they finish; returns rows written.

    Systems run in a seeded random order per sample, each from a cold prefix cache (its own fresh salt)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(out)
    done = done_keys(out)
    todo = [(s, sy, ll, i) for s, sy, ll, i in _plan(samples, systems, with_loglik, judge is not None, seed)
            if (s.id + (LOGLIK if ll else ""), sy.name) not in done]
    written = 0
    with progress_bar(len(todo), progress) as bar, out.open("a", encoding="utf-8") as f:
        classic = {r.sample_id: r for r in read_rows(out) if r.mode == "classic" and not r.error}
        for sample, system, ll, place in todo:
            bar.show(f"{sample.id}{LOGLIK if ll else ''} {system.name}")
            salt = cold_salt(sample, system, "loglik" if ll else "answer")
            if ll:
                row = await loglik(moa, sample, system, salt)
            else:
                row = await answer(moa, sample, system, max_tokens, turns, salt)
            row.order = place
            if system.mode == "classic" and not row.error and not ll:
                classic[sample.id] = row
            if judge is not None and sample.kind == "open" and not row.error and not ll:
                await _judge(judge, sample, row, classic.get(sample.id))
            f.write(row.to_json() + "\n")
            f.flush()  # a row on disk is a row a resumed run will skip
            written += 1
            bar.advance()
    return written
