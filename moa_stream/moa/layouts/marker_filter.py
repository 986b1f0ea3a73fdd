"""The answer's text filter: markers the aggregator writes never reach users, nor the blank lines before them."""

from __future__ import annotations

from collections.abc import Sequence

from engine import StopMatcher


class MarkerFilter:
    """Holds back answer text that may open a marker (matched by the engine's StopMatcher) and trailing blanks.

    Whitespace at the end of the text shown so far is held too: it is released with the next text, and
    dropped when a marker follows it (the blank lines before a block are not part of the answer).
    """

    def __init__(self, markers: Sequence[str]) -> None:
        if any(m[:1].isspace() for m in markers):
            raise ValueError("a marker may not start with whitespace: the filter holds trailing whitespace apart")
        self.markers = tuple(markers)
        self._stops = StopMatcher(self.markers)
        self._blank = ""  # held whitespace, before the matcher's held tail
        self._shown = ""  # the last character shown (a new turn's first word may need a space after it)
        self._new_turn = False

    @property
    def held(self) -> str:
        """Text not shown yet: trailing whitespace, then the start of a possible marker."""
        return self._blank + self._stops.held

    def push(self, text: str) -> tuple[str, bool]:
        """Text safe to show now, and whether a whole marker was written (text after it is dropped)."""
        if self.held == " " and text[:1].isspace():  # the same blank lines after the block
            text = text.lstrip()
        if self._new_turn and text:
            text = self._join(text)
        out, hit = self._stops.push(text)
        out, self._blank = self._blank + out, ""
        if hit:
            return self._show(out.rstrip()), True
        shown = out.rstrip()
        self._blank = out[len(shown):]
        return self._show(shown), False

    def _show(self, text: str) -> str:
        self._shown = text[-1:] or self._shown
        return text

    def _join(self, text: str) -> str:
        # A new assistant turn starts its first word without the space that would follow the previous turn's
        # last word: put one back, unless either side already breaks the text (whitespace, punctuation).
        self._new_turn = False
        if self.held or not self._shown or self._shown.isspace() or text[0].isspace() or text[0] in ".,;:!?)]}'\"":
            return text
        return " " + text

    def at_intake(self) -> None:
        """A block was just read: blank lines the model wrote before it (where a block would go) become a space."""
        if self.held and not self.held.strip():
            self._blank = " "

    def at_turn(self) -> None:
        """A new assistant turn continues the answer: its first word is joined to the text shown so far."""
        self._new_turn = True

    def flush(self) -> str:
        """What is still held when the answer ends, minus a trailing partial marker."""
        held = self._blank + self._stops.flush()
        self._blank = ""
        return held[:len(held) - self._stops.partial(held)].rstrip()
