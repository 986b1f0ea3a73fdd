"""Tools for agents: `Tool` (from a function, an OpenAI tool JSON or BFCL's classes), `ToolSet`, call formats.

```python
from moa_stream.tools import Tool, ToolSet, toolset

def add(a: int, b: int) -> int:
    '''Add two integers.'''
    return a + b

tools = ToolSet([Tool.from_function(add, pure=True)]) | toolset("bfcl:GorillaFileSystem")
```
"""

from . import hermes_format  # noqa: F401  (registers the default call format)
from .bfcl import BFCL_CLASSES, PURE_METHODS, bfcl_schema, bfcl_tools, bfcl_toolset
from .bfcl_classes import BfclCase, BfclError, bfcl_execute, bfcl_root, fresh_instances
from .call_format import CALL_FORMATS, CallFormat, ForceTool, ToolChoice, call_format, register_call_format
from .calls import ParsedCall, ToolCall, ToolResult
from .errors import ToolArgumentsError, ToolError, ToolLoadError, ToolSchemaError
from .hermes_format import HermesFormat
from .loading import toolset
from .runners import (
    CallRunner,
    InProcess,
    InThread,
    OffLoop,
    OnLoop,
    OnStateCopy,
    StatefulFunction,
    ToolState,
    WatchedOnLoop,
    runner_for,
)
from .tool import Tool
from .toolset import ToolSet, result_text

__all__ = [
    "BFCL_CLASSES",
    "CALL_FORMATS",
    "PURE_METHODS",
    "BfclCase",
    "BfclError",
    "CallFormat",
    "CallRunner",
    "ForceTool",
    "HermesFormat",
    "InProcess",
    "InThread",
    "OffLoop",
    "OnLoop",
    "OnStateCopy",
    "ParsedCall",
    "StatefulFunction",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolChoice",
    "ToolError",
    "ToolLoadError",
    "ToolResult",
    "ToolSchemaError",
    "ToolSet",
    "ToolState",
    "WatchedOnLoop",
    "bfcl_execute",
    "bfcl_root",
    "bfcl_schema",
    "bfcl_tools",
    "bfcl_toolset",
    "call_format",
    "fresh_instances",
    "register_call_format",
    "result_text",
    "runner_for",
    "toolset",
]
