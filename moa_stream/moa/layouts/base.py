"""The interface between the turn driver and an aggregator layout, and the registry of layouts by mode name.

A layout decides what the aggregator's context holds: how it is opened from the proposals' first text and how
later chunks enter it. The driver (moa_stream/moa/turn.py) runs the proposers, applies the start policy, samples
the answer and calls the layout at these points only:

Every layout samples the answer exactly like the others (the aggregator's own SamplingParams, nothing banned).

1. `prime()` while the proposers write their first chunks (compute what does not depend on them);
2. `start(texts)` once the start policy holds (every proposal over, for a layout that is not incremental);
3. `intake(chunks, texts, answer)` whenever later chunks arrived (incremental layouts only).

A new layout is one subclass with a `name`, decorated with `@register_layout`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from engine import Engine

from ...agent.slot import AgentSlot, Chunk
from ...errors import ConfigError
from ...events import LAYOUT_MODES
from ...registry import Registry
from .marker_filter import MarkerFilter

if TYPE_CHECKING:
    from ..turn_input import TurnInput


@dataclass
class Answer:
    """The aggregator's answer so far: the text shown to the user and every token id sampled."""

    text: str = ""
    ids: list[int] = field(default_factory=list)


class AggregatorLayout(ABC):
    """How the aggregator's context is built in one turn; subclasses set `name` and implement `start`."""

    name: ClassVar[str]
    reads_proposals: ClassVar[bool] = True  # False: the aggregator answers alone and no proposer runs

    def __init__(self, agg: AgentSlot, inp: TurnInput) -> None:
        self.agg = agg
        self.inp = inp
        self.filter = MarkerFilter(self.markers())

    def markers(self) -> tuple[str, ...]:
        """Strings the answer must never show (the filter holds them back and ends the step at one)."""
        return ()

    def reusable(self) -> bool:
        """Whether the aggregator's live sequence is this layout's context of the conversation so far."""
        return self.inp.reuse and self.agg.layout == self.name

    @classmethod
    def runs_on(cls, engine: Engine) -> bool:
        """Whether this layout can run on the engine (every one can, unless it needs an engine capability)."""
        return True

    async def prime(self) -> None:  # noqa: B027 - a hook most layouts leave empty
        """Compute what does not depend on the proposals while they write their first chunks."""

    @abstractmethod
    async def start(self, texts: Sequence[str]) -> None:
        """Make the aggregator's sequence end where the answer starts, given each proposal's text so far."""


class IncrementalLayout(AggregatorLayout):
    """A layout that starts on the first chunks and takes in later ones while the answer is written."""

    # True: an EOS ends only the aggregator's turn and chunks still to come may continue the answer;
    # False: an EOS ends the answer (text after it would sit outside the answer's turn).
    eos_ends_turn_only: ClassVar[bool] = False

    @abstractmethod
    async def intake(self, chunks: Sequence[Chunk], texts: Sequence[str], answer: Answer) -> None:
        """Take in chunks that arrived since the last intake; `texts` holds every proposal's text so far."""


LAYOUTS = Registry("layout")
register_layout = LAYOUTS.register  # class decorator: the layout becomes selectable by its `name` (as a mode)


_PREFERRED: dict[str, tuple[type[AggregatorLayout], ...]] = {}  # alias -> its layouts, first choice first


def alias_layout(alias: str, cls: type[AggregatorLayout], *fallbacks: type[AggregatorLayout]) -> None:
    """Make `alias` select the registered layout `cls` too, or on an engine `cls` cannot run on, the first of
    `fallbacks` that runs there (`staircase` names the default append-only layout)."""
    for c in (cls, *fallbacks):
        if LAYOUTS.get(c.name) is not c:
            raise ValueError(f"{c.__name__} is not registered")
    if LAYOUTS.get(alias, cls) is not cls:
        raise ValueError(f"layout name {alias!r} is taken by {LAYOUTS[alias].__name__}")
    LAYOUTS[alias] = cls
    _PREFERRED[alias] = (cls, *fallbacks)


def layout_for(name: str, engine: Engine) -> type[AggregatorLayout]:
    """The layout `name` selects for an aggregator on `engine` (an alias: its first layout that runs there)."""
    cls = layout_class(name)
    return next((c for c in _PREFERRED.get(name, ()) if c.runs_on(engine)), cls)


def layout_class(name: str) -> type[AggregatorLayout]:
    """The layout registered under `name`."""
    try:
        return LAYOUTS[name]
    except KeyError:
        known = [*(m for m in LAYOUT_MODES if m in LAYOUTS), *(n for n in LAYOUTS if n not in LAYOUT_MODES)]
        raise ConfigError(f"mode must be one of {', '.join(known)}; got {name!r}") from None
