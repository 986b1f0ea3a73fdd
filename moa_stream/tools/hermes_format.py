"""The default call format: calls as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes/Qwen style).

Results return as `<tool_response>{"name": ..., "content": ...}</tool_response>` blocks in one user turn. A result
is always valid JSON, so a `<` can only stand inside a JSON string: writing it `\\u003c` in front of our tag
names keeps the value and makes the format's own delimiters impossible to forge from a result. Special-token
strings are neutralised by the chat format when the turn is appended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from engine import StructuralTag

from ..prompts import render
from .call_format import CallFormat, ForceTool, ToolChoice, register_call_format
from .calls import ParsedCall, ToolCall, ToolResult
from .errors import ToolSchemaError
from .toolset import ToolSet

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# What starts a call in the grammar: any `<tool`, or a bare `{"name": "` (as llama.cpp's Hermes handler also
# accepts). A model may not write a `<tool_response>` (only results hold one), and Qwen2.5-Coder-1.5B writes
# exactly that, or the call's JSON without its tags, in place of its call; with these triggers the grammar
# turns either into a call valid under a tool's schema.
TRIGGER, BARE = "<tool", '{"name": "'
_BARE_START = re.compile(r'\s*\{\s*"name"\s*:')
_DELIMITER = re.compile(r"<(?=/?tool_(?:call|response)>)")
_BLOCK = re.compile(re.escape(OPEN) + r".*?(?:" + re.escape(CLOSE) + r"|(?=" + re.escape(OPEN) + r")|\Z)", re.S)
DEFAULT_INSTRUCTIONS = "You are a helpful assistant that uses tools to do what the user asks."


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


@lru_cache(maxsize=256)
def _compact_json_grammar_text(schema_json: str) -> str:
    import xgrammar

    return str(xgrammar.Grammar.from_json_schema(schema_json, any_whitespace=False))


def _compact_json_grammar(schema: dict[str, Any]) -> str:
    """EBNF of JSON valid under `schema`, written on one line as `render_call` writes it (", " and ": ").

    Free whitespace lets a small model pretty-print a call until its token budget runs out (or loop on
    newlines); one fixed layout keeps calls short and the same as the replayed ones.
    """
    return _compact_json_grammar_text(json.dumps(schema, sort_keys=True))


@register_call_format
class HermesFormat(CallFormat):
    """`<tool_call>` JSON blocks in the model's text; `<tool_response>` JSON blocks in the user turn after them."""

    name = "hermes"
    call_open, call_close = OPEN, CLOSE
    bare_open = '{"name"'

    def system_prompt(self, tools: ToolSet, instructions: str | None = None) -> str:
        """Instructions, the tools one JSON line each, and the call syntax."""
        lines = "\n".join(_json(t.summary()) for t in tools)
        return render("tool_system", instructions=instructions or DEFAULT_INSTRUCTIONS, tools=lines)

    def _begin(self, name: str) -> str:
        return f'{OPEN}\n{{"name": {_json(name)}, "arguments": '

    def structured(self, tools: ToolSet, choice: ToolChoice = "auto", parallel: bool = True) -> StructuralTag | None:
        """Free text until `<tool_call>`, then a call valid under one tool's schema (several calls allowed)."""
        if choice == "none" or len(tools) == 0:
            return None
        names = tools.names
        if isinstance(choice, ForceTool):
            if choice.name not in tools:
                raise ToolSchemaError(f"tool_choice names {choice.name!r}, which is not among the tools: {names}")
            names = [choice.name]
        elif choice not in ("auto", "required"):
            raise ToolSchemaError(f"tool_choice must be auto, required, none or a named tool; got {choice!r}")
        tags = [{"type": "tag", "begin": begin, "end": end,
                 "content": {"type": "grammar", "grammar": _compact_json_grammar(tools.get(n).parameters)}}  # type: ignore[union-attr]
                for n in names
                for begin, end in ((self._begin(n), "}\n" + CLOSE), (f"{BARE}{n}\", \"arguments\": ", "}"))]
        return StructuralTag.of({"type": "structural_tag", "format": {
            "type": "triggered_tags", "triggers": [TRIGGER, BARE], "tags": tags,
            "at_least_one": choice != "auto", "stop_after_first": not parallel}})

    def parse(self, text: str) -> list[ParsedCall]:
        """Each `<tool_call>` block (an unclosed last one too) read as JSON; junk around them is ignored. A reply
        without blocks that opens with a bare `{"name": ...}` object is that call."""
        calls = []
        for m in _BLOCK.finditer(text):
            closed = m.group(0).endswith(CLOSE)
            call = self._read(m.group(0)[len(OPEN):].removesuffix(CLOSE))
            if call.error and not closed:
                call = ParsedCall(call.name, error=f"the call was cut off before {CLOSE} ({call.error})")
            calls.append(call)
        if not calls and _BARE_START.match(text):
            calls.append(self._read(text))
        return calls

    def _read(self, body: str) -> ParsedCall:
        start = body.find("{")
        if start < 0:
            return ParsedCall("", error="a <tool_call> block holds no JSON object")
        try:
            obj, _ = json.JSONDecoder().raw_decode(body[start:])
        except json.JSONDecodeError as e:
            return ParsedCall("", error=f"the call is not valid JSON: {e.msg} at char {e.pos}")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return ParsedCall("", error='a call must be {"name": "<function>", "arguments": {...}}')
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI's wire format does
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            return ParsedCall(obj["name"], error="the call's arguments must be a JSON object")
        return ParsedCall(obj["name"], args)

    def render_call(self, call: ToolCall) -> str:
        """The call exactly as the constrained model writes it."""
        return f"{self._begin(call.name)}{_json(call.arguments)}}}\n{CLOSE}"

    def render_results(self, results: Sequence[ToolResult]) -> str:
        """Each result as a `<tool_response>` block holding JSON; `<` before our tag names is escaped."""
        blocks = []
        for r in results:
            body: dict[str, Any] = {"name": r.name}
            if r.error is not None:
                body["error"] = r.error
            else:
                try:
                    body["content"] = json.loads(r.result)
                except (json.JSONDecodeError, ValueError):
                    body["content"] = r.result
            blocks.append(render("tool_response", body=_DELIMITER.sub(r"\\u003c", _json(body))))
        return "\n".join(blocks)

    def strip_calls(self, text: str) -> str:
        """The text with every call block (or the bare call it opens with) removed."""
        if _BARE_START.match(text) and not _BLOCK.search(text):
            try:
                _, end = json.JSONDecoder().raw_decode(text.lstrip())
                return text.lstrip()[end:].strip()
            except json.JSONDecodeError:
                return ""
        return _BLOCK.sub("", text).strip()
