"""Aggregator layouts, one class per mode, selected by name: `layout_class("interleaved")`.

Importing this package registers the built-in layouts; a new one is a subclass of `AggregatorLayout` (or
`IncrementalLayout`) decorated with `@register_layout`. `staircase` is an alias: it names the append-only layout
that the measurements showed best (see README), so configs, chat `/mode` and server model ids keep one name.
"""

from .append_only import AppendOnlyLayout
from .base import (
    LAYOUTS,
    AggregatorLayout,
    Answer,
    IncrementalLayout,
    alias_layout,
    layout_class,
    layout_for,
    register_layout,
)
from .blocks import BlocksLayout
from .classic import ClassicLayout
from .interleaved import InterleavedLayout
from .interleaved_cued import InterleavedCuedLayout
from .marker_filter import MarkerFilter
from .reprefill import ReprefillLayout
from .shifted import ShiftedLayout
from .single import SingleLayout

StaircaseLayout = InterleavedLayout  # the layout the `staircase` mode selects
alias_layout("staircase", StaircaseLayout)

__all__ = [
    "LAYOUTS",
    "AggregatorLayout",
    "Answer",
    "AppendOnlyLayout",
    "BlocksLayout",
    "ClassicLayout",
    "IncrementalLayout",
    "InterleavedCuedLayout",
    "InterleavedLayout",
    "MarkerFilter",
    "ReprefillLayout",
    "ShiftedLayout",
    "SingleLayout",
    "StaircaseLayout",
    "alias_layout",
    "layout_class",
    "layout_for",
    "register_layout",
]
