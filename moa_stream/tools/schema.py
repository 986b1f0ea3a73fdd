"""JSON schemas of tool parameters: checked before use, and derived from a Python function's type hints."""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .errors import ToolSchemaError

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names


def check_name(name: object) -> str:
    """`name` if it is a usable tool name (letters, digits, _ and -, at most 64), else ToolSchemaError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ToolSchemaError(f"tool name {name!r} is not usable: use 1-64 letters, digits, '_' or '-'")
    return name


def check_parameters(name: str, schema: object) -> dict[str, Any]:
    """A copy of `schema` if it is an object schema that constrained decoding can compile, else ToolSchemaError."""
    if not isinstance(schema, dict):
        raise ToolSchemaError(f"tool {name!r}: parameters must be a JSON schema object, got {type(schema).__name__}")
    if schema.get("type", "object") != "object":
        raise ToolSchemaError(f"tool {name!r}: parameters must have \"type\": \"object\" (a call passes named "
                              f"arguments), got {schema.get('type')!r}")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise ToolSchemaError(f"tool {name!r}: parameters.properties must map parameter names to schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ToolSchemaError(f"tool {name!r}: parameters.required must be a list of parameter names")
    unknown = sorted(set(required) - set(props)) if props or "properties" in schema else []
    if unknown:
        raise ToolSchemaError(f"tool {name!r}: required parameters {unknown} are not in parameters.properties")
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise ToolSchemaError(f"tool {name!r}: parameters are not JSON ({e})") from e
    _compile(name, text)
    return json.loads(text)


def _compile(name: str, schema_json: str) -> None:
    # The grammar compiler is the judge that matters: a schema it rejects could not constrain a call.
    import xgrammar

    try:
        xgrammar.Grammar.from_json_schema(schema_json)
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        reason = reason.split("] ", 1)[-1].split(": ", 1)[-1] if "]" in reason else reason
        raise ToolSchemaError(f"tool {name!r}: parameters are not a usable JSON schema: {reason}") from None


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: description}) from a Google-style docstring (`Args:` section)."""
    summary_lines: list[str] = []
    params: dict[str, str] = {}
    section, current = "summary", None
    for raw in doc.splitlines():
        line = raw.strip()
        if re.match(r"^(Args|Arguments|Parameters|Params):$", line):
            section = "args"
            continue
        if re.match(r"^(Returns?|Raises|Yields|Examples?|Notes?):$", line):
            section = "other"
            continue
        if section == "summary":
            if not line and summary_lines:
                section = "body"
            elif line:
                summary_lines.append(line)
        elif section == "args" and line:
            m = re.match(r"^\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                params[current] = m.group(3).strip()
            elif current:
                params[current] = f"{params[current]} {line}".strip()
    return " ".join(summary_lines), params


def strip_titles(schema: Any) -> Any:
    """The schema without pydantic's `title` keywords (noise in a prompt); property names stay."""
    if isinstance(schema, list):
        return [strip_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {k: strip_titles(v) for k, v in value.items()}
        else:
            out[key] = strip_titles(value)
    return out


def function_model(fn: Callable[..., Any], name: str) -> tuple[str, type[BaseModel]]:
    """The function's docstring summary and a pydantic model of its keyword parameters (validates calls)."""
    try:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as e:
        raise ToolSchemaError(f"tool {name!r}: cannot read the function's signature and type hints ({e})") from e
    summary, docs = _docstring_parts(inspect.getdoc(fn) or "")
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname in ("self", "cls"):
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ToolSchemaError(f"tool {name!r}: parameter {pname!r} is {p.kind.description}; a tool call passes "
                                  "named arguments only, so give it a name and a type hint")
        default = ... if p.default is p.empty else p.default
        fields[pname] = (hints.get(pname, Any), Field(default, description=docs.get(pname) or None))
    try:
        model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
        model.model_json_schema()
    except Exception as e:  # pydantic raises several kinds for types it cannot describe
        raise ToolSchemaError(f"tool {name!r}: a parameter's type hint has no JSON schema ({e})") from e
    return summary, model
