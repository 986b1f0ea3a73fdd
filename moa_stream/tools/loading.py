"""Tools named in text, as on the command line: `bfcl:GorillaFileSystem,MathAPI`, `package.module:function`."""

from __future__ import annotations

import importlib
from typing import Any

from .bfcl import BFCL_CLASSES, bfcl_toolset
from .errors import ToolLoadError
from .tool import Tool
from .toolset import ToolSet


def _from_object(obj: Any, where: str) -> list[Tool]:
    if isinstance(obj, ToolSet):
        return list(obj)
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, list | tuple) and all(isinstance(t, Tool) for t in obj):
        return list(obj)
    if callable(obj):
        return [Tool.from_function(obj)]
    raise ToolLoadError(f"{where} is a {type(obj).__name__}; point at a function, a Tool, a list of Tools or a ToolSet")


def _import(spec: str) -> list[Tool]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ToolLoadError(f"tool spec {spec!r}: cannot import module {module_name!r} ({e})") from e
    if not hasattr(module, attr):
        raise ToolLoadError(f"tool spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return _from_object(getattr(module, attr), spec)


def toolset(spec: str, *, timeout: float | None = 30.0) -> ToolSet:
    """Tools from a comma-separated spec: `bfcl:Class` (later bare BFCL class names too) or `module:function`."""
    tools: list[Tool] = []
    bfcl: list[str] = []
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ToolLoadError("no tools named; e.g. --tools bfcl:GorillaFileSystem,MathAPI or --tools mymod:my_fn")
    for item in items:
        if item.startswith("bfcl:"):
            bfcl.append(item.removeprefix("bfcl:"))
        elif item in BFCL_CLASSES:
            bfcl.append(item)
        elif ":" in item:
            tools.extend(_import(item))
        else:
            raise ToolLoadError(f"tool spec {item!r}: write bfcl:<Class> (one of {', '.join(BFCL_CLASSES)}) "
                                "or <module>:<function>")
    if bfcl:
        tools.extend(bfcl_toolset(bfcl, timeout=timeout))
    return ToolSet(tools, timeout=timeout)
