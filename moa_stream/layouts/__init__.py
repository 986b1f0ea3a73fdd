"""Aggregator layouts, one class per mode, selected by name: `layout_class("staircase")`.

Importing this package registers the built-in layouts; a new one is a subclass of `AggregatorLayout` (or
`IncrementalLayout`) decorated with `@register_layout`.
"""

from .base import LAYOUTS, AggregatorLayout, Answer, IncrementalLayout, layout_class, register_layout
from .classic import ClassicLayout
from .marker_filter import MarkerFilter
from .reprefill import ReprefillLayout
from .single import SingleLayout
from .staircase import StaircaseLayout

__all__ = [
    "LAYOUTS",
    "AggregatorLayout",
    "Answer",
    "ClassicLayout",
    "IncrementalLayout",
    "MarkerFilter",
    "ReprefillLayout",
    "SingleLayout",
    "StaircaseLayout",
    "layout_class",
    "register_layout",
]
