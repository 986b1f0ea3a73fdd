"""A tool: a name, a description, a JSON schema of its parameters, the callable that runs it, and its purity."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ToolArgumentsError, ToolSchemaError
from .runners import CallRunner, runner_for
from .schema import check_name, check_parameters, function_model, strip_titles


@dataclass(frozen=True)
class Tool:
    """One callable tool. `pure`: no side effects and equal arguments give equal results (cacheable).

    `fn` may be None (a tool declared by a client): its calls are returned to the caller instead of run.
    `runner` says where a call runs and what a timeout stops (moa_stream/tools/runners.py).
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    pure: bool = False
    model: type[BaseModel] | None = field(default=None, compare=False, repr=False)  # validates and coerces
    runner: CallRunner | None = field(default=None, compare=False, repr=False)  # None: runner_for's choice

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.description, str):
            raise ToolSchemaError(f"tool {self.name!r}: description must be text")
        object.__setattr__(self, "parameters", check_parameters(self.name, self.parameters))
        if self.fn is not None and not callable(self.fn):
            raise ToolSchemaError(f"tool {self.name!r}: fn must be callable, got {type(self.fn).__name__}")
        if self.runner is None and self.fn is not None:
            # One runner per tool: the default for async tools remembers whether the tool blocks the loop.
            object.__setattr__(self, "runner", runner_for(self.fn, self.is_async, self.pure))

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                      pure: bool = False) -> Tool:
        """A tool from a (sync or async) function: type hints give the schema, the docstring the descriptions."""
        tool_name = name or getattr(fn, "__name__", "")
        check_name(tool_name)
        summary, model = function_model(fn, tool_name)
        schema = strip_titles(model.model_json_schema())
        schema.setdefault("properties", {})
        return cls(tool_name, description if description is not None else summary, schema, fn, pure, model)

    @classmethod
    def from_openai(cls, spec: Mapping[str, Any], fn: Callable[..., Any] | None = None, *, pure: bool = False) -> Tool:
        """A tool from an OpenAI tool JSON (`{"type": "function", "function": {...}}` or the inner function)."""
        if not isinstance(spec, Mapping):
            raise ToolSchemaError(f"a tool spec must be a JSON object, got {type(spec).__name__}")
        if spec.get("type", "function") != "function":
            raise ToolSchemaError(f"only function tools are supported, got type {spec.get('type')!r}")
        inner = spec.get("function", spec)
        if not isinstance(inner, Mapping):
            raise ToolSchemaError("a tool spec's `function` must be a JSON object with name and parameters")
        name = check_name(inner.get("name"))
        params = inner.get("parameters", {"type": "object", "properties": {}})
        return cls(name, str(inner.get("description") or ""), params, fn, pure)

    def summary(self) -> dict[str, Any]:
        """Name, description and parameter schema: how a prompt lists the tool."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def spec(self) -> dict[str, Any]:
        """The tool as OpenAI's tool JSON."""
        return {"type": "function", "function": self.summary()}

    @property
    def is_async(self) -> bool:
        """True when calling `fn` returns an awaitable (it runs on the event loop, not in a thread)."""
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)

    @property
    def call_runner(self) -> CallRunner:
        """How a call runs (see moa_stream/tools/runners.py): the tool's own runner or the default for its kind."""
        return self.runner if self.runner is not None else runner_for(self.fn, self.is_async, self.pure)

    def check_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments to pass (validated, coerced for function tools); ToolArgumentsError when they don't fit."""
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(f"{self.name}: arguments must be a JSON object, got {type(arguments).__name__}")
        if self.model is not None:
            try:
                parsed = self.model.model_validate(dict(arguments))
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(arguments)'}: {err['msg']}"
                                     for err in e.errors())
                raise ToolArgumentsError(f"{self.name}: {problems}") from None
            return {k: getattr(parsed, k) for k in parsed.model_fields_set}  # defaults stay the function's
        props = self.parameters.get("properties", {})
        missing = [r for r in self.parameters.get("required", []) if r not in arguments]
        closed = "properties" in self.parameters and self.parameters.get("additionalProperties") is not True
        unknown = [a for a in arguments if a not in props] if closed else []
        if missing or unknown:
            parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
            raise ToolArgumentsError(f"{self.name}: {', '.join(parts)} (parameters: {sorted(props)})")
        return dict(arguments)
