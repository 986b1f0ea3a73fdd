"""The bench's workload: BFCL traces as agent workflows, rendered into the tokens every mode reads."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import Grammar

if TYPE_CHECKING:
    pass

from moa_stream.tools import BfclCase, ToolCall

from ...bfcl.traces import TraceStep, chained_steps

# ---------------------------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workflow:
    """One agent's work: the tools it is shown and the trace steps it replays."""

    cases: tuple[BfclCase, ...]
    steps: tuple[TraceStep, ...]

    def function_docs(self) -> list[dict[str, Any]]:
        """The docs of every function its cases offer, each name once."""
        seen: dict[str, dict[str, Any]] = {}
        for case in self.cases:
            for doc in case.function_docs():
                seen.setdefault(doc["name"], doc)
        return list(seen.values())


def workflows(agents: int, steps: int, cases: Seq[BfclCase]) -> list[Workflow]:
    """`agents` workflows of `steps` steps each, every agent on its own cases (chained when one is too short)."""
    out = []
    pool = list(cases)
    for i in range(agents):
        rotated = pool[i * len(pool) // agents:] + pool[:i * len(pool) // agents]
        chosen = chained_steps(rotated, steps)
        used = {s.case_id for s in chosen}
        out.append(Workflow(tuple(c for c in rotated if c.id in used), tuple(chosen)))
    return out


# ---------------------------------------------------------------------------------------------- rendering
# The one place that turns a trace into tokens (the agent context formats will replace it): ChatML-style messages
# through the tokenizer's chat template, a call written as `<tool_call>{json}</tool_call>` by the assistant.


@dataclass(frozen=True)
class Segment:
    """A piece of conversation as text and as the token ids every mode feeds the model."""

    text: str
    ids: tuple[int, ...]


def compact_doc(doc: dict[str, Any]) -> str:
    """One line per function: `name(required, optional?): what it does` (BFCL's full JSON docs are ~3k tokens)."""
    params = doc.get("parameters", {})
    required = set(params.get("required", ()))
    names = [p if p in required else f"{p}?" for p in params.get("properties", {})]
    about = doc.get("description", "").split("Tool description:")[-1].strip()
    about = re.split(r"(?<=\.)\s", about, maxsplit=1)[0]
    return f"{doc['name']}({', '.join(names)}): {about}"


def call_text(call: ToolCall) -> str:
    """The text an assistant writes for a call."""
    return "<tool_call>" + json.dumps({"name": call.name, "arguments": call.arguments}) + "</tool_call>"


def literal_grammar(text: str) -> Grammar:
    """A grammar (GBNF, as llama.cpp and xgrammar read it) that accepts exactly `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return Grammar(f'root ::= "{escaped}"')


class ChatRendering:
    """Renders a workflow's pieces through the tokenizer's chat template, each piece tokenized once."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._base = [{"role": "system", "content": "S"}]
        marker = "\x00CALL\x00"
        closed = self._render([*self._base, {"role": "assistant", "content": marker}], False)
        self._close = closed[closed.index(marker) + len(marker):]  # what ends an assistant turn after its content

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))

    def _segment(self, text: str) -> Segment:
        return Segment(text, tuple(self._tok.encode(text, add_special_tokens=False)))

    def system(self, workflow: Workflow) -> Segment:
        """The system turn: what the agent does and the tools it may call."""
        tools = "\n".join(compact_doc(d) for d in workflow.function_docs())
        content = ("You are a tool-using agent. Answer each request with one call per step, written as "
                   '<tool_call>{"name": ..., "arguments": {...}}</tool_call>. Tools:\n' + tools)
        return self._segment(self._render([{"role": "system", "content": content}], False))

    def delta(self, step: TraceStep, previous: TraceStep | None, previous_call_end: str) -> Segment:
        """What a step appends: the end of the last call's turn, its tool result, the next user turn, the prompt.

        `previous_call_end` is the text the previous generation already wrote of the turn's end (its EOS).
        """
        msgs: list[dict[str, str]] = []
        if previous is not None:
            msgs.append({"role": "tool", "content": previous.result})
        if step.user:
            msgs.append({"role": "user", "content": step.user})
        base = self._render(self._base, False)
        text = self._render([*self._base, *msgs], True)[len(base):]
        if previous is not None:
            if not self._close.startswith(previous_call_end):
                previous_call_end = ""
            text = self._close[len(previous_call_end):] + text
        return self._segment(text)
