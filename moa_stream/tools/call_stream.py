"""Split a model's streamed text into plain text and tool calls as it arrives.

Text outside call blocks is passed on at once, except a tail that could still become the format's call opener.
A reply that opens with the format's bare call (Hermes: a `{"name": ...}` object without its block) is that call,
handed over once its JSON object is whole.
A call is handed over the moment its block parses as a complete call, which may be before the model has
written the block's closing tokens: the server streams it as a tool-call delta then, and speculative tool
execution may start it then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .call_format import CallFormat
from .calls import ParsedCall


@dataclass(frozen=True)
class TextPiece:
    """Model text outside any call block."""

    text: str


@dataclass(frozen=True)
class CallPiece:
    """One call of the stream (the `index`-th), complete or, at the end of an unclosed block, with its error."""

    index: int
    call: ParsedCall


Piece = TextPiece | CallPiece


def _held_back(text: str, opener: str) -> int:
    """Length of the longest end of `text` that is a proper start of `opener` (it may yet become one)."""
    for n in range(min(len(opener) - 1, len(text)), 0, -1):
        if text.endswith(opener[:n]):
            return n
    return 0


class CallStream:
    """Feed it text deltas; it returns the pieces that are now certain (see the module docstring)."""

    def __init__(self, fmt: CallFormat) -> None:
        self.fmt = fmt
        self.calls = 0
        self._buf = ""
        self._inside = False  # _buf starts with an open call block
        self._handed = False  # the open block's call was already handed over
        self._at_start = fmt.bare_open is not None  # nothing passed on yet: a bare call may still open the reply

    def _bare(self) -> list[Piece] | None:
        """At the reply's start: None once it cannot open with a bare call, else the pieces it gives now."""
        bare = self.fmt.bare_open or ""
        head = self._buf.lstrip()
        if not head or (len(head) < len(bare) and bare.startswith(head)):
            return []  # too early to tell
        if not head.startswith(bare):
            self._at_start = False
            return None
        try:
            _, end = json.JSONDecoder().raw_decode(head)
        except json.JSONDecodeError:
            return []  # the object is not whole yet
        self._at_start = False
        self._buf = head[end:]
        return [self._call(self._first(head[:end]))]

    def feed(self, text: str) -> list[Piece]:
        """The pieces `text` completes."""
        self._buf += text
        out: list[Piece] = []
        if self._at_start:
            bare = self._bare()
            if bare is not None:
                if self._at_start:
                    return bare
                out += bare
        opener, closer = self.fmt.call_open, self.fmt.call_close
        while True:
            if not self._inside:
                at = self._buf.find(opener)
                if at < 0:
                    keep = _held_back(self._buf, opener)
                    if len(self._buf) > keep:
                        out.append(TextPiece(self._buf[:len(self._buf) - keep]))
                        self._buf = self._buf[len(self._buf) - keep:]
                    return out
                if at:
                    out.append(TextPiece(self._buf[:at]))
                self._buf, self._inside, self._handed = self._buf[at:], True, False
            end = self._buf.find(closer, len(opener))
            if end < 0:
                if not self._handed:
                    parsed = self.fmt.parse(self._buf)
                    if parsed and parsed[0].error is None:
                        out.append(self._call(parsed[0]))
                return out
            block, self._buf = self._buf[:end + len(closer)], self._buf[end + len(closer):]
            self._inside = False
            if not self._handed:
                out.append(self._call(self._first(block)))

    def finish(self) -> list[Piece]:
        """What is left when the stream ends: held-back text, or an unclosed call block (read as is)."""
        rest, self._buf = self._buf, ""
        if self._at_start and rest.strip():  # a bare call cut off before its object closed
            self._at_start = False
            return [self._call(self._first(rest))]
        if not self._inside:
            return [TextPiece(rest)] if rest else []
        self._inside = False
        return [] if self._handed else [self._call(self._first(rest))]

    def _first(self, block: str) -> ParsedCall:
        parsed = self.fmt.parse(block)
        return parsed[0] if parsed else ParsedCall("", error="an empty call block")

    def _call(self, call: ParsedCall) -> CallPiece:
        self._handed = True
        self.calls += 1
        return CallPiece(self.calls - 1, call)
