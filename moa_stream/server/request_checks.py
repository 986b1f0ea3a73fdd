"""Checks of a parsed request that need more than its schema: fields the pipeline cannot honour, logit_bias
token ids against the model's vocabulary, and text that is not valid Unicode (a lone surrogate such as
`"\\ud800"` parses as JSON but cannot be encoded, so no tokenizer can read it).

Each failure is a 400 naming the field, so nothing a client sets is silently ignored.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError
from .schema import ChatCompletionRequest

BAN = -100.0  # OpenAI's "never pick this token"; the only bias every backend applies exactly


def refuse_unsupported(req: ChatCompletionRequest) -> None:
    """400 for fields that ask for what the pipeline cannot do (several choices, log probabilities)."""
    if req.n not in (None, 1):
        raise APIError(400, f"n={req.n} is not supported: the pipeline writes one answer per request", param="n")
    if req.logprobs:
        raise APIError(400, "logprobs are not supported: the answer is written by the aggregator over several "
                       "generations", param="logprobs")
    if req.top_logprobs:
        raise APIError(400, "top_logprobs are not supported (see logprobs)", param="top_logprobs")


def banned_tokens(logit_bias: dict[str, float] | None, vocab_size: int) -> tuple[int, ...]:
    """The token ids a logit_bias bans (-100); 0 changes nothing; any other bias or id is a 400."""
    banned: set[int] = set()
    for key, bias in (logit_bias or {}).items():
        if not key.isdigit() or not 0 <= int(key) < vocab_size:
            raise APIError(400, f"logit_bias: {key!r} is not a token id of this model (0 to {vocab_size - 1})",
                           param="logit_bias")
        if not -100 <= bias <= 100:
            raise APIError(400, f"logit_bias[{key}]: a bias must be in [-100, 100], got {bias}", param="logit_bias")
        if bias == BAN:
            banned.add(int(key))
        elif bias != 0:
            raise APIError(400, f"logit_bias[{key}]: only -100 (never pick the token) is supported, got {bias}",
                           param="logit_bias")
    return tuple(sorted(banned))


def bad_text_at(value: Any, path: str = "") -> str | None:
    """Where the first string that cannot be encoded as UTF-8 (a lone surrogate) is, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = ((f"[{i}]", v) for i, v in enumerate(value))  # type: ignore[assignment]
    else:
        return None
    for key, item in items:
        key_str = str(key)
        at = bad_text_at(key_str, path) or bad_text_at(
            item, f"{path}{key_str}" if key_str.startswith("[") else f"{path}.{key_str}" if path else key_str)
        if at is not None:
            return at
    return None


def check_text(req: ChatCompletionRequest) -> None:
    """400 naming the field whose text holds a lone surrogate (or other code point UTF-8 cannot encode)."""
    at = bad_text_at(req.model_dump(exclude_none=True))
    if at is not None:
        raise APIError(400, f"{at}: the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape); send "
                       "valid Unicode", param=at, code="invalid_text")
