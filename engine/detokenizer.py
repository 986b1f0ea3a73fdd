"""Incremental detokenization of one generation, with stop strings cut by the shared StopMatcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .stop_matcher import StopMatcher


class Detokenizer:
    """Turns generated ids into text deltas without re-decoding the whole output, and finds stop strings.

    Byte-level BPE can split one character over several tokens; text is only released once the pending
    tokens decode without a replacement character.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window (context for correct spacing)
        self._read = 0  # ids up to here are already released as text
        self._stops = StopMatcher(stop)
        self.text = ""  # everything released so far

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (text safe to emit now, whether a stop string was hit)."""
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        full = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if full.endswith("\ufffd") or len(full) <= len(prefix_text):
            return "", False
        new = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(self._ids)
        out, hit = self._stops.push(new)
        self.text += out
        return out, hit

    def flush(self) -> str:
        """Release all text held back (the generation ended without a stop): the stop-string tail, and tokens
        that end inside a character, decoded as they stand (so the whole text equals the full decode)."""
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        full = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        self._prefix = self._read = len(self._ids)
        out, hit = self._stops.push(full[len(prefix_text):]) if len(full) > len(prefix_text) else ("", False)
        out += "" if hit else self._stops.flush()
        self.text += out
        return out
