"""An agent context format: how a tool agent's history becomes tokens, appended event by event, never rewritten.

Every format has the same shape, so that each step of an agent costs only its new tokens:

1. `prefix()`: the stable start (system prompt and tools), computed once;
2. `append(event)`: the tokens one history event adds to the main sequence (user turn, call, result, error);
3. `cue()`: what opens the model's turn; it goes on a fork of the main sequence (a fork computes nothing),
   so the main sequence never holds it and the next event appends right after the last one;
4. `proposals_cue(proposals)`: for an aggregator, the proposed calls and then the cue, also on a fork.

The model always answers with a call in the Hermes syntax (`<tool_call>{...}</tool_call>`): `structured()` is
the constraint and `read_call()` the parser, both HermesFormat's. Content is encoded with special-token strings
neutralised, and each format escapes its own delimiters, so a tool result cannot close or forge anything.
A new format is a subclass with a `name`, decorated with `@register_agent_format`; one instance renders one
history (it remembers what it appended last).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from engine import StructuralTag

from ...errors import ConfigError
from ...prompts import render
from ...registry import Registry
from ...tools import HermesFormat, ToolCall, ToolSet
from ..context import ChatFormat
from .events import HistoryEvent
from .template_glue import TemplateGlue


class AgentFormat(ABC):
    """One way to lay out a tool agent's history as append-only tokens (see the module docstring)."""

    name: ClassVar[str]

    def __init__(self, chat: ChatFormat, tools: ToolSet, instructions: str | None = None,
                 answers: bool = False) -> None:
        self.chat = chat
        self.tools = tools
        self.calls = HermesFormat()
        self.glue = TemplateGlue(chat.tok)
        self.instructions = instructions
        self.answers = answers  # a live agent may end its turn with words (next-step evals only ever call)

    @abstractmethod
    def prefix(self) -> list[int]:
        """The stable start of the context: system prompt with the tools, and the format's fixed opening."""

    @abstractmethod
    def append(self, event: HistoryEvent) -> list[int]:
        """The tokens this event adds to the main sequence, right after everything appended before."""

    @abstractmethod
    def cue(self) -> list[int]:
        """What opens the model's turn after the events so far (appended on a fork only)."""

    @abstractmethod
    def proposals_cue(self, proposals: Sequence[str]) -> list[int]:
        """Other agents' proposed next calls, then the cue (appended on an aggregator's fork only)."""

    def system_prompt(self) -> str:
        """The system message: the format's own instructions, the tools and the call syntax."""
        own = render(f"agent_{self.name}_system")
        if self.answers:
            own += "\n" + render(f"agent_{self.name}_answer")
        text = f"{self.instructions}\n\n{own}" if self.instructions else own
        return self.calls.system_prompt(self.tools, text)

    def answer_stops(self) -> tuple[str, ...]:
        """Stop strings that end a reply in words (a format whose log the model could go on writing)."""
        return ()

    def read_answer(self, text: str) -> str:
        """The reply in words as the user should see it."""
        return text.strip()

    @staticmethod
    def tool_lines(schemas: Sequence[dict[str, Any]]) -> str:
        """Tools as the system prompt lists them: one JSON line each."""
        return "\n".join(json_line({k: s.get(k) for k in ("name", "description", "parameters")}) for s in schemas)

    def structured(self) -> StructuralTag | None:
        """The constraint that makes the model write at least one call valid under a tool's schema."""
        return self.calls.structured(self.tools, "required")

    def stop(self) -> tuple[str, ...]:
        """Stop strings: the end of the first call (one step is one call)."""
        return (self.calls.call_close,)

    def read_call(self, text: str) -> tuple[ToolCall | None, str | None]:
        """The first readable call in the model's text, or None and why there was none."""
        parsed = self.calls.parse(text)
        for p in parsed:
            if p.error is None:
                return ToolCall("", p.name, dict(p.arguments)), None
        return None, parsed[0].error if parsed else "the reply holds no call"

    def call_text(self, call: ToolCall) -> str:
        """A call exactly as the model writes it."""
        return self.calls.render_call(ToolCall("", call.name, call.arguments))

    def markup(self, text: str) -> list[int]:
        """Token ids of template text: its special-token strings are the real special tokens."""
        return list(self.chat.tok.encode(text, add_special_tokens=False)) if text else []

    def content(self, text: str) -> list[int]:
        """Token ids of content: special-token strings can only ever be plain text."""
        return self.chat.encode_text(self.chat.neutralize(text)) if text else []


CALL_TAGS = ("tool_call", "tool_response")  # the Hermes call syntax's tags: no content may open or close one


def escape_tags(text: str, tags: Sequence[str], replacement: str) -> str:
    """`text` with the `<` of every `<tag>` / `</tag>` in `tags` replaced, so it cannot open or close one."""
    pattern = re.compile(r"<(?=/?(?:" + "|".join(map(re.escape, tags)) + r")>)")
    return pattern.sub(lambda _: replacement, text)


def json_line(value: Any) -> str:
    """A value as one line of JSON (no raw newline can appear in it)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


AGENT_FORMATS = Registry("agent format")
register_agent_format = AGENT_FORMATS.register  # class decorator: the format becomes selectable by its `name`


def agent_format(name: str, chat: ChatFormat, tools: ToolSet, instructions: str | None = None,
                 answers: bool = False) -> AgentFormat:
    """A new instance of the agent format registered under `name`, for one history (`answers`: a live agent's,
    which may reply in words)."""
    try:
        cls = AGENT_FORMATS[name]
    except KeyError:
        raise ConfigError(f"agent format must be one of {', '.join(AGENT_FORMATS)}; got {name!r}") from None
    return cls(chat, tools, instructions, answers)
