"""One chat completion request as a pipeline run: its messages split into question and history, its events produced.

`produce` runs the pipeline and hands every event (or the failure, then `END`) to a callback; cancelling it
cancels the agents, which frees their sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from starlette.types import Receive

from engine import StructuredOutput
from moa_stream import Conversation, EngineError, Message, Metrics, MoA, MoAError, Mode

from .errors import APIError, failure_of
from .schema import ChatMessage
from .tool_calls import MessageToolCall, ToolRequest, assistant_text, tool_results_text

log = logging.getLogger(__name__)

END: Final = object()  # the last item `produce` hands over


@dataclass(frozen=True)
class Job:
    """One validated request, ready to run."""

    moa: MoA
    model: str
    mode: Mode
    question: str
    history: list[Message]
    max_tokens: int | None
    answer_limit: int
    cache_salt: str | None = None
    structured: StructuredOutput | None = None  # the answer's response_format or tool-call constraint
    tools: ToolRequest | None = None
    conversation: Conversation | None = None  # a session's kept conversation (the X-Session-Id header)
    session: tuple[str | None, str] | None = None  # its key: (tenant salt, session id)
    stops: tuple[str, ...] = ()  # the request's `stop` strings: the answer the client gets ends before the first

    def delivered(self, content: str, calls: Sequence[MessageToolCall]) -> list[Message]:
        """The history the client holds once it has this answer: what it sent, then the answer as it got it."""
        answer = assistant_text(content, calls, self.tools.fmt, -1) if self.tools else content
        return [*self.history, Message("user", self.question), Message("assistant", answer)]

    def finish_reason(self, metrics: Metrics, called: bool = False, stopped: bool = False) -> str:
        """'tool_calls' when the answer calls tools, 'stop' at a stop string, else as the aggregator finished."""
        if called:
            return "tool_calls"
        if stopped:
            return "stop"
        agg = next((a for a in metrics.agents.values() if a.role == "aggregator"), None)
        if agg is not None and agg.finish_reason in ("stop", "length"):
            return agg.finish_reason
        return "length" if metrics.answer_tokens >= self.answer_limit else "stop"


@dataclass(frozen=True)
class Failure:
    """The run failed; the client gets this error."""

    error: APIError


def message_text(msg: ChatMessage, index: int) -> str:
    """A message's content as text; raises APIError for a non-text part."""
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                           param=f"messages[{index}].content")
        texts.append(part.text)
    return "".join(texts)


def split_messages(messages: list[ChatMessage], tools: ToolRequest | None = None) -> tuple[str, list[Message]]:
    """The question (last user message, or the results of the last calls) and the history before it.

    With tools, the system prompt carries them, assistant calls are written in the call format and each run of
    `tool` messages becomes the one turn of results the model reads after its calls.
    """
    history: list[Message] = []
    waiting: dict[str, str] = {}  # id -> function name of the calls not answered yet
    results: list[tuple[str, str, str]] = []
    for i, msg in enumerate(messages):
        if msg.role == "function" or (tools is None and (msg.role == "tool" or msg.tool_calls)):
            what = "function messages are not supported (use tool)" if msg.role == "function" else \
                "tool calls and results need the request's `tools`"
            raise APIError(400, f"messages[{i}]: {what}", param=f"messages[{i}]")
        if msg.role == "tool":
            assert tools is not None
            if msg.tool_call_id not in waiting:
                raise APIError(400, f"messages[{i}].tool_call_id {msg.tool_call_id!r} answers no earlier assistant "
                               "tool call (or answers one twice)", param=f"messages[{i}].tool_call_id")
            results.append((msg.tool_call_id, waiting.pop(msg.tool_call_id), message_text(msg, i)))
            continue
        if results:
            history.append(Message("user", tool_results_text(results, tools.fmt)))  # type: ignore[union-attr]
            results = []
        role = "system" if msg.role == "developer" else msg.role
        content = message_text(msg, i)
        if msg.tool_calls:
            assert tools is not None
            content = assistant_text(content, msg.tool_calls, tools.fmt, i)
            waiting.update({c.id: c.function.name for c in msg.tool_calls})
        history.append(Message(role, content))
    if results:
        history.append(Message("user", tool_results_text(results, tools.fmt)))  # type: ignore[union-attr]
    if tools is not None:
        if history and history[0].role == "system":
            history[0] = Message("system", tools.system_prompt(history[0].content))
        else:
            history.insert(0, Message("system", tools.system_prompt(None)))
    last = history.pop()
    if last.role != "user":
        raise APIError(400, "the last message must come from the user (role 'user')", param="messages")
    if not last.content.strip():
        raise APIError(400, "the last user message is empty; send some text", param="messages")
    return last.content, history


async def produce(job: Job, timeout_s: float, put: Callable[[object], Awaitable[None]]) -> None:
    """Run the pipeline, awaiting `put` for each event (or a Failure), then END; cancelling this frees every agent.

    `put` may wait (a full bounded queue): the run is then paced by the client reading the answer.
    """
    try:
        async with asyncio.timeout(timeout_s):
            # No salt, no keyword: requests without a tenant share the cache as before.
            extra: dict[str, object] = {} if job.cache_salt is None else {"cache_salt": job.cache_salt}
            if job.structured is not None:
                extra["structured"] = job.structured
            if job.conversation is not None:  # a session: only the new turn is appended to its agents' sequences
                events = job.conversation.stream(job.question, mode=job.mode, max_tokens=job.max_tokens,
                                                 structured=job.structured)
            else:
                events = job.moa.stream(job.question, job.history, mode=job.mode, max_tokens=job.max_tokens,
                                        **extra)
            async with contextlib.aclosing(events):
                async for ev in events:
                    await put(ev)
    except (TimeoutError, EngineError, MoAError, ValueError) as exc:
        await put(Failure(failure_of(exc)))
    except Exception as exc:  # a bug stays in its request: a 500 on this stream, the server keeps serving
        log.exception("request failed")
        await put(Failure(failure_of(exc)))
    await put(END)


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
