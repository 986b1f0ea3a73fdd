"""`compact`: ours, built for KV reuse. The history is the model's own answer, one line per event.

After a fixed system prompt and user message, the assistant's turn holds the log: calls exactly as the model
writes them, and `user:`, `result:` and `error:` lines whose bodies are one line of JSON (a `<` before a call
tag is written `\\u003c`, so no body can open or close a call or start another line). Nothing is inserted per
step: the cue is empty, so the model continues the log where the last event ended, and a ground-truth call
appended afterwards is the very text the model would have written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ...prompts import render
from .base import CALL_TAGS, AgentFormat, escape_tags, json_line, register_agent_format
from .events import AnswerEvent, CallEvent, ErrorEvent, HistoryEvent, ResultEvent, ToolsEvent, UserTurn, payload

_ESCAPED_LT = "\\u003c"  # `<` inside a JSON string, as JSON writes it


@register_agent_format
class CompactFormat(AgentFormat):
    """A one-line-per-event log inside the model's own answer; an empty cue."""

    name = "compact"

    def prefix(self) -> list[int]:
        """System message, the fixed user message, and the opening of the answer that holds the log."""
        return (self.markup(self.glue.opening()) + self.content(self.system_prompt())
                + self.markup(self.glue.between("system", "user")) + self.content(render("agent_compact_user"))
                + self.markup(self.glue.answer_cue("user")))

    def line(self, kind: str, body: Any) -> str:
        """One `kind: <json>` line."""
        return f"{kind}: {escape_tags(json_line(body), CALL_TAGS, _ESCAPED_LT)}\n"

    def append(self, event: HistoryEvent) -> list[int]:
        """One line (a call: the call block as the model writes it, then a newline)."""
        match event:
            case UserTurn(text=text):
                return self.content(self.line("user", text))
            case CallEvent(call=call):
                return self.content(self.call_text(call) + "\n")
            case ResultEvent(result=result):
                return self.content(self.line("result", payload(result)))
            case ErrorEvent(error=error):
                return self.content(self.line("error", error))
            case AnswerEvent(text=text):
                return self.content(self.line("answer", text))
            case ToolsEvent(schemas=schemas):
                return self.content(self.line("tools_added", [s.get("name") for s in schemas])
                                    + self.tool_lines(schemas) + "\n")
        raise TypeError(f"not a history event: {event!r}")

    def answer_stops(self) -> tuple[str, ...]:
        """A reply ends where the model would start the log's next line itself."""
        return tuple(f"\n{kind}:" for kind in ("user", "result", "error", "answer"))

    def read_answer(self, text: str) -> str:
        """The `answer:` line's text (its JSON string decoded), or the model's words as written."""
        body = text.strip().removeprefix("answer:").strip()
        try:
            value = json.loads(body)
        except ValueError:
            return body
        return value if isinstance(value, str) else body

    def cue(self) -> list[int]:
        """Nothing: the model continues the log."""
        return []

    def proposals_cue(self, proposals: Sequence[str]) -> list[int]:
        """One `proposals:` line listing the proposed calls."""
        return self.content(self.line("proposals", list(proposals)))
