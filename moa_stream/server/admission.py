"""What a request must pass before any agent runs: its prompt must fit the context, and its tenant salts the cache."""

from __future__ import annotations

import hashlib

from moa_stream import MoA

from .errors import APIError


def check_context_length(moa: MoA, question: str, history: list[dict[str, str]], answer_tokens: int) -> None:
    """Raise OpenAI's 400 `context_length_exceeded` when an agent's prompt (plus the answer) cannot fit its engine.

    Every agent must be able to read its prompt and write a token; the aggregator must also fit the whole
    answer, as OpenAI counts messages plus max_tokens.
    """
    prompts = moa.prompt_tokens(question, history)
    aggregator = moa.config.aggregator.name
    for agent in moa.config.agents():
        limit = moa.engines[agent.backend].max_model_len
        prompt = prompts[agent.name]
        completion = answer_tokens if agent.name == aggregator else 1
        if prompt + completion > limit:
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion) for "
                f"agent {agent.name!r}. Please reduce the length of the messages or completion.",
                param="messages", code="context_length_exceeded")


def tenant_salt(api_key: str | None, request_salt: str | None) -> str | None:
    """The request's prefix-cache salt: the API key's digest (keys on) combined with the request's `cache_salt`.

    With keys on, tenants never share cached KV whatever salt they send; the key itself never reaches the engine.
    """
    if api_key is None:
        return request_salt
    digest = hashlib.sha256(b"moa-stream tenant\0" + api_key.encode())
    if request_salt is not None:
        digest.update(b"\0salt\0" + request_salt.encode())
    return digest.hexdigest()
