"""What one turn answers and how: the question, the history, the layouts and knobs, shared by the driver and the
layouts (its own module, so that the layouts never import the driver that imports them)."""

from __future__ import annotations

from dataclasses import dataclass

from engine import StructuredOutput

from ..agent.context import Message
from ..config import StaircaseConfig


@dataclass
class TurnInput:
    """What a turn answers and how."""

    question: str
    history: list[Message]
    mode: str  # a registered layout name (one of MODES for the built-in ones)
    knobs: StaircaseConfig
    max_tokens: int | None = None
    reuse: bool = False  # a conversation: agents' live sequences may be extended instead of re-opened
    cache_salt: str | None = None  # only sequences of the same salt (tenant) share prefix-cache blocks
    structured: StructuredOutput | None = None  # the answer's constraint (a response format, tool calls)
    layer_modes: tuple[str, ...] = ()  # the layouts of proposer layers 1.. (missing ones: `mode`)
    label: str = ""  # the mode the user asked for, as Metrics names it (a debate mode; default: `mode`)
