"""What a generation must conform to: a JSON schema, any JSON object, or a grammar (the request side only).

These are plain values carried by `SamplingParams.structured`; an engine turns them into a token mask (the
embedded engines compile them with xgrammar) or passes them to a server that accepts them (HTTP, vLLM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import InvalidSamplingError


def _parsed(value: Any, what: str) -> Any:
    """`value` itself, or the JSON it holds when it is text (InvalidSamplingError if that does not parse)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise InvalidSamplingError(f"{what} is not valid JSON: {e}; pass a JSON object") from e


@dataclass(frozen=True)
class JsonSchema:
    """Output must be JSON valid under `schema` (kept as compact JSON text so params stay hashable)."""

    schema: str

    @classmethod
    def of(cls, schema: dict[str, Any] | str) -> JsonSchema:
        """From a schema dict or its JSON text (checked to parse as a JSON object)."""
        schema = _parsed(schema, "JSON schema")
        if not isinstance(schema, dict):
            raise InvalidSamplingError(f"a JSON schema must be a JSON object, got {type(schema).__name__}")
        # Key order is kept: xgrammar writes an object's properties in the schema's order.
        return cls(json.dumps(schema, separators=(",", ":")))

    def as_dict(self) -> dict[str, Any]:
        """The schema as a dict."""
        return json.loads(self.schema)


@dataclass(frozen=True)
class JsonObject:
    """Output must be one JSON object of any shape (OpenAI's `response_format: json_object`)."""


@dataclass(frozen=True)
class Grammar:
    """Output must match this EBNF grammar (GBNF as llama.cpp and xgrammar read it; the start rule is `root`)."""

    ebnf: str

    def __post_init__(self) -> None:
        if not isinstance(self.ebnf, str) or "root" not in self.ebnf:
            raise InvalidSamplingError("a grammar must be EBNF text with a `root` rule")


@dataclass(frozen=True)
class StructuralTag:
    """Free text with tagged, schema-constrained regions (xgrammar's structural tag, as vLLM's `structural_tag`).

    Tool calling uses it: text is free until a trigger such as `<tool_call>`, then a JSON call valid under the
    tool's schema, then the end tag. `spec` is the canonical JSON of `{"type": "structural_tag", "format": ...}`.
    """

    spec: str

    @classmethod
    def of(cls, spec: dict[str, Any] | str) -> StructuralTag:
        """From a structural-tag dict or its JSON text (checked to be a `structural_tag` object)."""
        spec = _parsed(spec, "structural tag")
        if not isinstance(spec, dict) or spec.get("type") != "structural_tag" or "format" not in spec:
            raise InvalidSamplingError('a structural tag must be {"type": "structural_tag", "format": {...}}')
        return cls(json.dumps(spec, sort_keys=True, separators=(",", ":")))

    def as_dict(self) -> dict[str, Any]:
        """The structural tag as a dict."""
        return json.loads(self.spec)


StructuredOutput = JsonSchema | JsonObject | Grammar | StructuralTag
