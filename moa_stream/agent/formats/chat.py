"""`chat`: the history as OpenAI-style messages through the model's chat template.

User turns are user messages, calls are assistant messages holding the call as the model writes it, results
and errors are `tool` messages holding `<tool_response>` blocks. Each message is appended with the template's
own glue (see TemplateGlue), so the main sequence is token for token a prefix of a whole-prompt render; the cue
is the template's generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...prompts import render
from ...tools import ToolResult
from .base import CALL_TAGS, AgentFormat, escape_tags, register_agent_format
from .events import AnswerEvent, CallEvent, ErrorEvent, HistoryEvent, ResultEvent, ToolsEvent, UserTurn


@register_agent_format
class ChatAgentFormat(AgentFormat):
    """OpenAI-style messages (user, assistant call, tool result) in the model's chat template."""

    name = "chat"
    _last = "system"  # the role of the last message appended

    def prefix(self) -> list[int]:
        """The template's opening and the system message's content (its end comes with the next message)."""
        self._last = "system"
        return self.markup(self.glue.opening()) + self.content(self.system_prompt())

    def _message(self, role: str, text: str) -> list[int]:
        tokens = self.markup(self.glue.between(self._last, role)) + self.content(text)
        self._last = role
        return tokens

    def append(self, event: HistoryEvent) -> list[int]:
        """One message: the glue after the previous message, then this one's content."""
        match event:
            case UserTurn(text=text):  # a user turn cannot forge a call or a result either
                return self._message("user", escape_tags(text, CALL_TAGS, "&lt;"))
            case CallEvent(call=call):
                return self._message("assistant", self.call_text(call))
            case ResultEvent(name=name, result=result):
                return self._message("tool", self.calls.render_results([ToolResult("", name, result)]))
            case ErrorEvent(name=name, error=error):
                return self._message("tool", self.calls.render_results([ToolResult("", name, error=error)]))
            case AnswerEvent(text=text):
                return self._message("assistant", escape_tags(text, CALL_TAGS, "&lt;"))
            case ToolsEvent(schemas=schemas):
                return self._message("user", render("agent_tools_added", tools=self.tool_lines(schemas)))
        raise TypeError(f"not a history event: {event!r}")

    def cue(self) -> list[int]:
        """The end of the last message and the generation prompt."""
        return self.markup(self.glue.answer_cue(self._last))

    def proposals_cue(self, proposals: Sequence[str]) -> list[int]:
        """A user message listing the proposed calls, then the generation prompt."""
        note = render("agent_proposals", proposals="\n".join(proposals))
        return (self.markup(self.glue.between(self._last, "user")) + self.content(note)
                + self.markup(self.glue.answer_cue("user")))
