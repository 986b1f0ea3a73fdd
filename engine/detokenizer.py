"""Incremental detokenization and stop-string matching for one generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
        self._stop = tuple(stop)
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self.text = ""
        self._held = ""  # released text held back because it may be the start of a stop string

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (text safe to emit now, whether a stop string was hit)."""
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        full = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if full.endswith("\ufffd") or len(full) <= len(prefix_text):
            return "", False
        new = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(self._ids)
        if not self._stop:
            self.text += new
            return new, False
        pending = self._held + new
        for s in self._stop:
            idx = pending.find(s)
            if idx >= 0:
                out = pending[:idx]
                self.text += out
                self._held = ""
                return out, True
        # Hold back the tail that could still grow into a stop string.
        keep = self._max_stop - 1
        out, self._held = (pending[:-keep], pending[-keep:]) if keep and len(pending) > keep else (
            (pending, "") if not keep else ("", pending))
        self.text += out
        return out, False

    def flush(self) -> str:
        """Release text held back for stop-string matching (the generation ended without a stop)."""
        out, self._held = self._held, ""
        self.text += out
        return out
