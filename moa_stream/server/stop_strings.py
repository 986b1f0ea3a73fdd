"""OpenAI's `stop`: the answer the client gets ends before the first stop string, on every backend and mode.

The cut is made on the answer's text as it streams, not in the engine: a staircase answer is written over
several generations with intakes between them (a stop string may straddle two), and a layout reads an
engine's "stop" as "wants more to read". Text that could still begin a stop string is held back until the
next piece tells. After a stop the run goes on to its end unseen, so its metrics stay whole for `usage`.
"""

from __future__ import annotations


class StopCut:
    """Cuts a stream of text at the first of `stops`; `feed` gives what may be sent now, `flush` the rest."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hit = False
        self._held = ""
        self._hold = max((len(s) for s in stops), default=1) - 1

    def feed(self, text: str) -> str:
        """The part of the text so far that is surely before any stop string (nothing once one was seen)."""
        if self.hit or not self.stops:
            return "" if self.hit else text
        self._held += text
        at = min((i for s in self.stops if (i := self._held.find(s)) >= 0), default=-1)
        if at >= 0:
            self.hit = True
            out, self._held = self._held[:at], ""
            return out
        safe = max(0, len(self._held) - self._hold)
        # Hold back only a tail that is a prefix of some stop string.
        while safe < len(self._held) and not any(s.startswith(self._held[safe:]) for s in self.stops):
            safe += 1
        out, self._held = self._held[:safe], self._held[safe:]
        return out

    def flush(self) -> str:
        """What is still held back, at the end of the answer (it began no stop string after all)."""
        out, self._held = self._held, ""
        return "" if self.hit else out

    def cut(self, text: str) -> str:
        """A whole answer, cut before its first stop string."""
        return self.feed(text) + self.flush()
