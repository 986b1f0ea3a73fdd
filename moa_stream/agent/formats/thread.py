"""`thread`: the whole history as one user message of typed XML-ish events with YAML bodies.

The "own your context window" agent format: after the system prompt a single user message grows by one
`<event>` block per event, and the cue asks "what's the next step?" and opens the model's answer. Each
block's body is YAML; a `<` that would open or close one of the thread's tags (or a call's) is written `&lt;`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from ...prompts import render
from .base import AgentFormat, escape_tags, register_agent_format
from .events import AnswerEvent, CallEvent, ErrorEvent, HistoryEvent, ResultEvent, ToolsEvent, UserTurn, payload

TAGS = ("user_message", "call", "result", "error", "answer", "tools_added", "proposals", "tool_call",
        "tool_response")


@register_agent_format
class ThreadFormat(AgentFormat):
    """One growing user message of `<user_message>`, `<call>`, `<result>`, `<error>` blocks."""

    name = "thread"

    def prefix(self) -> list[int]:
        """System message, then the opening of the one user message that holds the thread."""
        return (self.markup(self.glue.opening()) + self.content(self.system_prompt())
                + self.markup(self.glue.between("system", "user")) + self.content(render("agent_thread_open")))

    def block(self, tag: str, body: dict[str, Any]) -> str:
        """One event: `<tag>`, its YAML body (tags escaped), `</tag>`."""
        text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 30)
        return f"<{tag}>\n{escape_tags(text, TAGS, '&lt;')}</{tag}>\n"

    def append(self, event: HistoryEvent) -> list[int]:
        """One block appended to the thread."""
        match event:
            case UserTurn(text=text):
                return self.content(self.block("user_message", {"text": text}))
            case CallEvent(call=call):
                return self.content(self.block("call", {"name": call.name, "arguments": call.arguments}))
            case ResultEvent(name=name, result=result):
                return self.content(self.block("result", {"name": name, "content": payload(result)}))
            case ErrorEvent(name=name, error=error):
                return self.content(self.block("error", {"name": name, "error": error}))
            case AnswerEvent(text=text):
                return self.content(self.block("answer", {"text": text}))
            case ToolsEvent(schemas=schemas):
                return self.content(self.block("tools_added", {"tools": [s.get("name") for s in schemas]})
                                    + self.tool_lines(schemas) + "\n")
        raise TypeError(f"not a history event: {event!r}")

    def answer_stops(self) -> tuple[str, ...]:
        """A reply ends where the model would write a result (or a user message) itself."""
        return ("<result>", "<error>", "<user_message>")

    def cue(self) -> list[int]:
        """The question that ends the thread, the end of the user message and the generation prompt."""
        return self.content(render("agent_thread_cue")) + self.markup(self.glue.answer_cue("user"))

    def proposals_cue(self, proposals: Sequence[str]) -> list[int]:
        """A `<proposals>` block with the proposed calls, then the cue."""
        return self.content(self.block("proposals", {"calls": list(proposals)})) + self.cue()
