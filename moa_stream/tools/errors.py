"""Errors about tools: a bad schema or tool spec is raised; a failing call becomes an error result instead."""

from __future__ import annotations

from ..errors import MoAStreamError


class ToolError(MoAStreamError):
    """Something about a tool is wrong; the message names the tool and what to fix."""


class ToolSchemaError(ToolError, ValueError):
    """A tool's name or JSON schema cannot be used (not an object schema, unknown type, unnamed parameter...)."""


class ToolArgumentsError(ToolError, ValueError):
    """A call's arguments do not fit the tool's schema (missing, unknown or mistyped parameters)."""


class ToolLoadError(ToolError):
    """A tool spec (`bfcl:Class`, `module:function`) names nothing that can be loaded."""
