"""Stop strings in streamed text: the one matcher every backend (and the staircase's marker filter) uses."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds stop strings in text that arrives in pieces; the earliest match wins, as in vLLM.

    Text that could still grow into a stop string is held back, but only the longest tail that is the start of
    some stop string, so text is released as soon as it cannot be part of one.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit: nothing after it counts)."""
        if not self.stop:
            return text, False
        pending = self.held + text
        hits = [i for i in (pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.held = ""
            return pending[:min(hits)], True
        keep = self.partial(pending)
        out, self.held = pending[:len(pending) - keep], pending[len(pending) - keep:]
        return out, False

    def partial(self, text: str) -> int:
        """Length of the longest tail of text that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """Release the held tail (the text ended without a stop string)."""
        out, self.held = self.held, ""
        return out
