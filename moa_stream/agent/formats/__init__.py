"""Agent context formats, one class each, selected by name: `agent_format("compact", chat, tools)`.

Importing this package registers the built-in formats (chat, thread, compact); see base.py for the contract.
"""

from . import chat, compact, thread  # noqa: F401  (registers the built-in formats)
from .base import AGENT_FORMATS, AgentFormat, agent_format, json_line, register_agent_format
from .events import (
    AnswerEvent,
    CallEvent,
    ErrorEvent,
    HistoryEvent,
    ResultEvent,
    ToolsEvent,
    UserTurn,
    result_event,
)

__all__ = [
    "AGENT_FORMATS",
    "AgentFormat",
    "AnswerEvent",
    "CallEvent",
    "ErrorEvent",
    "HistoryEvent",
    "ResultEvent",
    "ToolsEvent",
    "UserTurn",
    "agent_format",
    "json_line",
    "register_agent_format",
    "result_event",
]
