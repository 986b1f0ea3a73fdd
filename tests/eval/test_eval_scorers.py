"""Scorers, intervals and the judge's reply parsing on hand-checked cases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from eval import command, datasets, report, rows, runner, scorers
from eval.judge import Judge, parse_rating, parse_verdict
from moa_stream import StaircaseConfig


def test_normalised_exact_and_contained_match():
    assert scorers.normalize("The  Eiffel Tower!") == "eiffel tower"
    assert scorers.exact_match("the Nine.", ["Nine"]) == 1.0
    assert scorers.exact_match("Nine generals", ["Nine"]) == 0.0
    assert scorers.contains("There are nine five-star generals.", ["Nine"]) == 1.0
    assert scorers.contains("Ninety", ["Nine"]) == 0.0  # whole words only
    assert scorers.contains("It was 1972.", ["14 December 1972", "1972"]) == 1.0


def test_letter_match():
    assert scorers.extract_letter("The answer is (C).") == "C"
    assert scorers.extract_letter("B. quit eating lunch out") == "B"
    assert scorers.extract_letter("A. 4 inches\n\nThe correct answer is D. 1 foot") == "D"  # the stated answer wins
    assert scorers.extract_letter("I cannot tell") is None
    assert scorers.extract_letter("A good answer is hard; the answer is B") == "B"
    assert scorers.option_letters("Q?\nA. x\nB. y\nC. z\nD. w\nE. v\nAnswer with the letter.") == "ABCDE"
    assert scorers.letter_match("Option D is right", "D. $0") == 1.0
    assert scorers.letter_match("I think A.", "B") == 0.0


def test_yes_no_match():
    assert scorers.yes_no_match("Yes, it is.", "yes") == 1.0
    assert scorers.yes_no_match("No. Yes would be wrong.", "yes") == 0.0  # the first one counts
    assert scorers.yes_no_match("False.", "no") == 1.0
    assert scorers.yes_no_match("Nobody knows", "no") == 0.0  # whole words


def test_numeric_match():
    assert scorers.numeric_match("So they have 16 oranges.", "16 oranges") == 1.0
    assert scorers.numeric_match("nine apples", "9 apples") == 1.0
    assert scorers.numeric_match("1,250 people", "1250") == 1.0
    assert scorers.numeric_match("The mean is 79.2", "79.2 points") == 1.0
    assert scorers.numeric_match("15", "16") == 0.0
    assert scorers.numeric_match("16", "no number") == 0.0


def test_rouge_l():
    assert scorers.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert scorers.rouge_l("cat sat", "dog ran") == 0.0
    # LCS of [cat, sat] and [cat, ran, away] is 1 word: P = 1/2, R = 1/3, F1 = 0.4.
    assert scorers.rouge_l("the cat sat", "the cat ran away") == pytest.approx(0.4)


def test_intervals():
    e = report.estimate([1.0, 2.0, 3.0, 4.0])
    assert e.mean == 2.5 and e.n == 4
    assert (e.high - e.low) / 2 == pytest.approx(1.959964 * 1.290994 / 2, rel=1e-5)
    w = report.estimate([1.0] * 2 + [0.0] * 8, proportion=True)  # Wilson: 2/10 -> [0.057, 0.510]
    assert w.mean == 0.2 and w.low == pytest.approx(0.0567, abs=1e-3) and w.high == pytest.approx(0.5098, abs=1e-3)
    zero = report.estimate([0.0] * 20, proportion=True)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.1611, abs=1e-3)  # all wrong still has a width
    same = report.paired_delta([(1.0, 1.0), (0.0, 0.0)] * 5)
    assert same.mean == 0.0 and same.low == 0.0 and same.high == 0.0
    worse = report.paired_delta([(0.0, 1.0)] * 8 + [(1.0, 1.0)] * 2)
    assert worse.mean == pytest.approx(-0.8) and worse.high < 0 and not worse.contains(0.0)
    # Twenty pairs from two episodes that each went one way: apart they look separated, resampled as the two
    # episodes they are, they do not.
    episodes = [[(1.0, 0.0)] * 10, [(0.0, 0.0)] * 10]
    assert report.paired_delta([p for e in episodes for p in e]).low > 0
    together = report.clustered_paired_delta(episodes)
    assert together.mean == 0.5 and together.n == 20 and (together.low, together.high) == (0.0, 1.0)


def test_systems_spec():
    assert [s.name for s in runner.parse_systems("single, staircase@8")] == ["single", "staircase@8"]
    with pytest.raises(ValueError, match="unknown system"):
        runner.parse_systems("fast")
    with pytest.raises(ValueError, match="chunk size"):
        runner.parse_systems("classic@8")
    with pytest.raises(ValueError, match="chunk size"):
        runner.parse_systems("staircase@0")


def test_a_large_chunk_size_is_not_capped():
    """staircase@512 gets 512-token chunks, first and later ones (the default max_chunk_tokens is 256)."""
    (system,) = runner.parse_systems("staircase@512")
    knobs = system.knobs(StaircaseConfig())
    assert [knobs.chunk_size(i) for i in range(4)] == [512, 512, 512, 512]
    assert runner.parse_systems("staircase")[0].knobs(StaircaseConfig()) == StaircaseConfig()


def test_judge_reply_parsing():
    assert parse_verdict("Both are fine but B is clearer. [[B]]") == "B"
    assert parse_verdict("[[C]]") == "C" and parse_verdict("no idea") is None
    assert parse_rating("Rating: [[7]]") == 7.0 and parse_rating("Rating: 11") is None
    assert parse_rating("I'd say rating 4.5 overall") == 4.5


class _AlwaysFirst(Judge):
    """A judge that always prefers the answer shown first. Fake: no real model is reliably position-biased on
    demand, and this is the bias the order swap exists to cancel."""

    def __init__(self) -> None:
        self.replies = []

    async def _ask(self, prompt: str) -> str:
        self.replies.append(prompt)
        return "Assistant A is better. [[A]]"


async def test_pairwise_swaps_the_order_to_cancel_position_bias():
    judge = _AlwaysFirst()
    assert await judge.pairwise("q?", "mine", "baseline") == 0.5  # A once as mine, once as baseline
    first, second = judge.replies
    assert first.index("mine") < first.index("baseline") and second.index("baseline") < second.index("mine")


def test_committed_results_read_back_as_typed_rows():
    """Rows written before later fields existed (the reference run) still read, as `Row`s, and summarise."""
    results = Path(__file__).resolve().parents[2] / "eval" / "results"
    reference = rows.read_rows(results / "reference" / "rows.jsonl")
    assert len(reference) == 240 and all(isinstance(r, rows.Row) for r in reference)
    assert reference[0].later_turns == [] and reference[0].judge_replies == [] and reference[0].prefill_carried == 0
    mt = rows.read_rows(results / "mt-bench-judge" / "rows.jsonl")
    assert all(isinstance(t, rows.LaterTurn) for r in mt for t in r.later_turns) and mt[0].later_turns
    assert rows.Row.from_dict(json.loads(mt[0].to_json())) == mt[0]
    assert [s.system for s in report.summarize(reference)][:2] == ["single", "classic"]


def test_degeneration_scores_count_loops_against_an_answer():
    loop = "1. ** 2. ** 3. (Read) to practice " * 4
    assert scorers.repeated_ngrams("the cat sat on the mat today") == 0.0
    assert scorers.repeated_ngrams(loop) > 0.6 and scorers.distinct_n(loop) < 0.4
    assert scorers.repeated_ngrams("a b a b a b", 2) == pytest.approx(1 - 2 / 5)
    assert scorers.distinct_n("a b a b", 2) == pytest.approx(2 / 3)
    assert scorers.repeated_ngrams("too short") is None and scorers.distinct_n("one") is None
    assert scorers.degeneration("one") == (None, None) and scorers.degeneration("a b c d") == (0.0, 1.0)


def test_options_of_a_multiple_choice_prompt():
    prompt = "Q?\nA. 4 inches\nB) (i) and (iii) only\nAnswer with the letter of the correct option."
    assert scorers.options(prompt) == [("A", "4 inches"), ("B", "(i) and (iii) only")]
    assert all(len(scorers.options(s.prompt)) == 4 for s in datasets.load("mmlu", 20, 0))


def test_streaming_layouts_take_chunk_sizes():
    assert [s.name for s in runner.parse_systems("blocks@4,staircase@8,staircase-reprefill@16,interleaved@32")] == [
        "blocks@4", "staircase@8", "staircase-reprefill@16", "interleaved@32"]
    with pytest.raises(ValueError, match="chunk size"):
        runner.parse_systems("single@8")


def test_system_order_is_random_per_sample_and_reproducible():
    samples = datasets.load("mmlu", 5, 0)
    systems = runner.parse_systems("single,classic,staircase@8,blocks@8")
    plan = runner._plan(samples, systems, True, False, seed=1)
    assert plan == runner._plan(samples, systems, True, False, seed=1)
    assert plan != runner._plan(samples, systems, True, False, seed=2)
    orders = {tuple((sy.name, ll) for s, sy, ll, _ in plan if s is sample) for sample in samples}
    assert len(orders) > 1 and all(len(o) == 8 for o in orders)
    judged = runner._plan(samples, systems, True, True, seed=1)  # the judge's baseline runs first
    assert all(sy.mode == "classic" and not ll for _, sy, ll, i in judged if i == 0)


def test_sample_size_from_the_wanted_ci_width():
    assert command.samples_for_ci_width(0.2) == 97 and command.samples_for_ci_width(0.3) == 43
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--ci-width", "0.2", "--dataset", "mmlu", "--dataset", "nq-open:5"])
    assert command._datasets(args) == [("mmlu", 97), ("nq-open", 5)]
    assert command._datasets(parser.parse_args(["--ci-width", "0.3"])) == [("nq-open", 43), ("mmlu", 43)]
    assert command._datasets(parser.parse_args([])) == [("nq-open", 20), ("mmlu", 20)]
    with pytest.raises(SystemExit):
        parser.parse_args(["--ci-width", "1.5"])


def _row(sample: str, system: str, score: float, dataset: str = "mmlu", **scores: float) -> rows.Row:
    mode, _, chunk = system.partition("@")
    return rows.Row(sample, dataset, "mc", system, mode, int(chunk) if chunk else None, "A", score,
                    {"score": score, **scores}, 1.0, 2.0, 3, 10, 0, 1)


def test_verdict_makes_a_quality_claim_only_when_classic_is_separated_from_single():
    n = 30
    apart = ([_row(f"s{i}", "single", 0.0) for i in range(n)] + [_row(f"s{i}", "classic", 1.0) for i in range(n)]
             + [_row(f"s{i}", "staircase@8", float(i % 10 != 0)) for i in range(n)])
    text = report.verdict(apart)
    assert "| mmlu quality | 1.000 [1.000, 1.000] | yes |" in text
    assert "| staircase@8 | mmlu quality |" in text and "Quality claims are made" in text
    same = [_row(f"s{i}", sy, float(i % 2)) for i in range(n) for sy in ("single", "classic", "staircase@8")]
    text = report.verdict(same)
    assert "| mmlu quality | 0.000 [0.000, 0.000] | no |" in text and "supports **no** claim" in text
    assert "staircase@8 |" not in text
    assert "no quality claim" in report.verdict([_row("s0", "classic", 1.0)])
    few = [_row(f"s{i}", sy, float(sy == "classic")) for i in range(4) for sy in ("single", "classic")]
    assert "| mmlu quality | 1.000 [1.000, 1.000] | too few pairs |" in report.verdict(few)
    # The continuous log-likelihood measure is a measure of its own.
    ll = [_row(f"s{i}", sy, 1.0, "mmlu-loglik", p_correct=p) for i in range(n)
          for sy, p in (("single", 0.3 + i / 1000), ("classic", 0.5 + i / 1000))]
    text = report.verdict(ll)
    assert "| mmlu-loglik p(correct) | 0.200 [0.200, 0.200] | yes |" in text
    assert "| mmlu-loglik accuracy | 0.000 [0.000, 0.000] | no |" in text
