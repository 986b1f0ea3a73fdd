"""Scorers: normalised and contained match (QA), letter match (multiple choice), yes/no, numeric match, ROUGE-L,
and degeneration (repeated n-grams, distinct-n) so an answer that loops counts against its system."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from .datasets import Sample

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
          "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20}


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation or articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised answer."""
    p = normalize(prediction)
    return float(any(p == normalize(a) for a in answers))


def contains(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if a normalised answer appears in the normalised prediction (as whole words)."""
    p = f" {normalize(prediction)} "
    return float(any(normalize(a) and f" {normalize(a)} " in p for a in answers))


def extract_letter(prediction: str, letters: str = "ABCD") -> str | None:
    """The option letter a free-text answer picks: 'B', '(B)', 'B.', 'answer is B', 'Option B'."""
    text = prediction.strip()
    # No bare "X " at the start: "A" and "I" open ordinary sentences.
    patterns = [rf"answer(?: is)?[:\s]*\(?([{letters}])\b", rf"[Oo]ption\s*\(?([{letters}])\b",
                rf"^\(?([{letters}])[.):]", rf"^([{letters}])$", rf"\(([{letters}])\)", rf"\b([{letters}])\."]
    for pat in patterns:
        m = re.search(pat, text)
        if m:
            return m.group(1).upper()
    return None


def option_letters(prompt: str) -> str:
    """The option letters a multiple-choice prompt lists ('A. ...' lines), 'ABCD' if it lists none."""
    found = "".join(dict.fromkeys(re.findall(r"(?m)^([A-J])[.)] ", prompt)))
    return found or "ABCD"


def options(prompt: str) -> list[tuple[str, str]]:
    """The (letter, text) options a multiple-choice prompt lists as 'A. text' lines, in order."""
    return [(m.group(1), m.group(2).strip()) for m in re.finditer(r"(?m)^([A-J])[.)] (.+)$", prompt)]


def letter_match(prediction: str, correct: str, letters: str = "ABCD") -> float:
    """1.0 if the letter the prediction picks (among `letters`) is the correct one."""
    return float(extract_letter(prediction, letters) == correct.strip()[:1].upper())


def yes_no_match(prediction: str, answer: str) -> float:
    """1.0 if the first 'yes' or 'no' (or 'true'/'false') in the prediction is the answer."""
    m = re.search(r"\b(yes|no|true|false)\b", prediction.lower())
    said = {"true": "yes", "false": "no"}.get(m.group(1), m.group(1)) if m else None
    return float(said == answer.strip().lower())


def _numbers(text: str) -> list[float]:
    out = [float(m.replace(",", "")) for m in _NUMBER.findall(text)]
    out += [float(_WORDS[w]) for w in re.findall(r"[a-z]+", text.lower()) if w in _WORDS]
    return out


def numeric_match(prediction: str, answer: str, rel_tol: float = 1e-6) -> float:
    """1.0 if the answer's number appears among the prediction's numbers (digits or number words)."""
    want = _numbers(answer)
    if not want:
        return 0.0
    target = want[0]
    return float(any(abs(x - target) <= rel_tol * max(1.0, abs(target)) for x in _numbers(prediction)))


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over normalised words (longest common subsequence)."""
    a, b = normalize(candidate).split(), normalize(reference).split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def repeated_ngrams(text: str, n: int = 4) -> float | None:
    """Fraction of the answer's word n-grams that repeat an earlier one (Welleck et al.'s seq-rep-n); None if
    the answer has fewer than n words."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def worst_ngram_count(text: str, n: int = 4) -> int:
    """How many times the answer's most frequent word n-gram occurs (1: none repeats; 0: fewer than n words)."""
    words = text.lower().split()
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return max(counts.values(), default=0)


def distinct_n(text: str, n: int = 2) -> float | None:
    """Distinct word n-grams over all word n-grams (Li et al.'s distinct-n); None if there are none."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def degeneration(prediction: str) -> tuple[float | None, float | None]:
    """(rep4, distinct2): repeated 4-gram fraction (0 = no loop) and distinct bigrams (1 = none repeated)."""
    return repeated_ngrams(prediction, 4), distinct_n(prediction, 2)


def score(sample: Sample, prediction: str) -> dict[str, float]:
    """Every automatic score that applies to the sample; 'score' is the headline one (absent for open)."""
    if sample.kind == "mc":
        return {"score": letter_match(prediction, sample.answers[0], option_letters(sample.prompt))}
    if sample.kind == "yesno":
        return {"score": yes_no_match(prediction, sample.answers[0])}
    if sample.kind == "math":
        return {"score": numeric_match(prediction, sample.answers[0])}
    if sample.kind == "qa":
        return {"score": contains(prediction, sample.answers), "exact": exact_match(prediction, sample.answers)}
    return {}
