"""The async iterator generate() returns: the deltas of one generation, cancelled the moment it is left."""

from __future__ import annotations

from collections.abc import Callable

from .generation import Generation
from .protocol import TokenDelta


class TokenStream:
    """The deltas of one generation. Leaving it early cancels the generation at once: on break (CPython drops
    the iterator immediately), aclose() or task cancellation, so the sequence is idle on the very next line
    (an async generator would only be finalised on a later event-loop turn)."""

    def __init__(self, gen: Generation, cancel: Callable[[], None]) -> None:
        self._gen = gen
        self._cancel = cancel  # stops the generation if it is still the sequence's current one
        self._done = False

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenDelta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._gen.queue.get()
        except BaseException:  # the consumer was cancelled (or timed out) while waiting
            self._close()
            raise
        if item is None or isinstance(item, BaseException) or item.finish_reason is not None:
            self._done = True
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the generation if it is still running."""
        self._close()

    def _close(self) -> None:
        self._done = True
        self._cancel()

    def __del__(self) -> None:
        self._close()
