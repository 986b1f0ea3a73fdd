"""One chat completion request as a pipeline run: its messages split into question and history, its events produced.

`produce` runs the pipeline and hands every event (or the failure, then `END`) to a callback; cancelling it
cancels the agents, which frees their sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from starlette.types import Receive

from engine import StructuredOutput
from moa_stream import EngineError, Metrics, MoA, MoAError, Mode

from .errors import APIError, failure_of
from .schema import ChatMessage

log = logging.getLogger(__name__)

END: Final = object()  # the last item `produce` hands over


@dataclass(frozen=True)
class Job:
    """One validated request, ready to run."""

    moa: MoA
    model: str
    mode: Mode
    question: str
    history: list[dict[str, str]]
    max_tokens: int | None
    answer_limit: int
    cache_salt: str | None = None
    structured: StructuredOutput | None = None  # the answer's response_format

    def finish_reason(self, metrics: Metrics) -> str:
        """'stop' or 'length', as the aggregator finished (or from the answer's length when it did not say)."""
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


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The question (last user message) and the history before it."""
    history: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if msg.role in ("tool", "function"):
            raise APIError(400, f"messages[{i}].role {msg.role!r} is not supported: the MoA pipeline has no tools",
                           param=f"messages[{i}].role")
        role = "system" if msg.role == "developer" else msg.role
        history.append({"role": role, "content": message_text(msg, i)})
    last = history.pop()
    if last["role"] != "user":
        raise APIError(400, "the last message must come from the user (role 'user')", param="messages")
    if not last["content"].strip():
        raise APIError(400, "the last user message is empty; send some text", param="messages")
    return last["content"], history


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
            events = job.moa.stream(job.question, job.history, mode=job.mode, max_tokens=job.max_tokens, **extra)
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
