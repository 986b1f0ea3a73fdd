"""The prompt-lookup proposer on its own: which tokens it drafts from a sequence's earlier text."""

from __future__ import annotations

import pytest

from engine.prompt_lookup import PromptLookup


def test_drafts_what_followed_the_latest_match_of_the_longest_suffix() -> None:
    pl = PromptLookup(max_draft=3, max_ngram=3, min_ngram=1)
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [5, 6, 7, 1, 2, 9, 6, 7, 3, 4, 6, 7]
    # Suffix (6, 7) occurs at 1 and 6; the latest (6) wins: 3, 4, 6 followed it.
    assert pl.draft(tokens) == [3, 4, 6]
    # A longer suffix beats a shorter one: (9, 6, 7) occurs before at 5 only; 8, 9, 6 followed it.
    assert pl.draft([*tokens[:8], 8, 9, 6, 7]) == [8, 9, 6]


def test_no_match_or_no_room_drafts_nothing() -> None:
    pl = PromptLookup(max_draft=4, max_ngram=3, min_ngram=2)
    assert pl.draft([1, 2, 3, 4]) == []
    assert pl.draft([1, 2, 1, 2], limit=0) == []
    assert pl.draft([1, 2, 3, 1, 2], limit=1) == [3]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup(min_ngram=3, max_ngram=2)
