"""A remote engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, hosted APIs) over streaming HTTP.

A sequence lives on the client as its token history; every request sends the whole history, which only ever
grows at the end, so the server's prefix cache reuses the KV of everything it has seen before. `append`
therefore computes nothing here; the server computes the new tokens on the next `generate`.

Request formats, tried in this order and remembered once one works:
1. `/v1/completions` with a token-id prompt (vLLM, SGLang, llama.cpp's own server): exact, no re-tokenising;
2. `/v1/completions` with the history decoded to text (llama-cpp-python, most hosted APIs), when the server
   rejects token ids with 400/422;
3. `/v1/chat/completions`, when the server has no `/v1/completions` (404/405): the ChatML turns of the
   history become messages.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import httpx

from .. import models
from ..errors import BackendError, ModelLoadError, UnsupportedFeatureError
from ..protocol import FinishReason, SamplingParams, Sequence, TokenDelta
from ..stop_matcher import StopMatcher
from .client_sequences import ClientSeq, ClientSequences
from .openai_wire import (
    DIALECTS,
    Api,
    Dialect,
    chat_messages,
    choice_text,
    describe,
    dialect_of,
    error_detail,
    error_message,
    finish_reason,
    normalize_base_url,
    sampling_body,
    sse_events,
    structured_fields,
)

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class HttpStats:
    """What the HTTP layer did: requests, retries, format fallbacks, and whether the server reports its cache."""

    requests: int = 0
    retries: int = 0
    fallbacks: int = 0
    failures: int = 0
    cache_reported: bool = False  # a response carried usage.prompt_tokens_details.cached_tokens
    api: Api | None = None  # the request format in use once one worked


class TextToIds:
    """Turns streamed text into token ids so that decoding the ids gives back exactly that text.

    The last token of an encoding may still merge with text that has not arrived, so it is held back
    until more text comes or the stream ends.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._pending = ""

    def push(self, text: str, final: bool = False) -> list[int]:
        """Add text; return the ids that are settled."""
        self._pending += text
        if not self._pending:
            return []
        ids = list(self._tok.encode(self._pending, add_special_tokens=False))
        if final:
            self._pending = ""
            return ids
        if len(ids) <= 1:
            return []
        keep = ids[:-1]
        covered = self._tok.decode(keep, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not self._pending.startswith(covered):  # a character split across tokens: wait for the rest
            return []
        self._pending = self._pending[len(covered):]
        return keep


class HttpEngine(ClientSequences):
    """Stateful engine over an OpenAI-compatible server: see engine.protocol.Engine for the contract."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        tokenizer: Any | None = None,
        max_retries: int = 3,
        api: Api | None = None,
        extra_body: dict[str, Any] | None = None,
        include_usage: bool = True,
        return_token_ids: bool = True,
        max_model_len: int | None = None,
        max_connections: int = 64,
        backoff_s: float = 0.25,
        tokenizer_name: str | None = None,
        eos_token_ids: Seq[int] = (),
        structured_dialect: Dialect | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise BackendError(f"unknown http backend options {sorted(unknown)}; known: api, extra_body, "
                               "include_usage, return_token_ids, max_model_len, max_connections, backoff_s, "
                               "tokenizer_name, eos_token_ids, structured_dialect")
        if structured_dialect not in (None, *DIALECTS):
            raise BackendError(f"option structured_dialect={structured_dialect!r}: use one of {', '.join(DIALECTS)} "
                               "(or leave it out to detect it from the server's /models)")
        # How the server spells structured output; None: asked of /models on the first structured request.
        self._dialect: Dialect | None = structured_dialect
        self.base_url = normalize_base_url(base_url)
        self.model = model
        if timeout_s <= 0:
            raise BackendError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise BackendError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        if api not in (None, "tokens", "text", "chat"):
            raise BackendError(f"option api={api!r}: use tokens, text or chat (or leave it out to detect)")
        self._api: Api | None = api
        self._api_fixed = api is not None
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self.include_usage = bool(include_usage)
        self.return_token_ids = bool(return_token_ids)
        tokenizer = tokenizer_name or tokenizer
        tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else (
            _load_tokenizer(tokenizer if isinstance(tokenizer, str) else model))
        eos = {int(t) for t in eos_token_ids}
        if tok.eos_token_id is not None:
            eos.add(int(tok.eos_token_id))
        tok_max = int(getattr(tok, "model_max_length", 0) or 0)
        max_len = int(max_model_len) if max_model_len else (tok_max if 0 < tok_max < 10**7 else 8192)
        super().__init__(tok, frozenset(eos), len(tok), max_len, model or "")
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=int(max_connections),
                                max_keepalive_connections=int(max_connections)),
        )
        self.http = HttpStats(api=self._api if self._api_fixed else None)
        self._served_model: str | None = model
        self._model_probed = model is not None

    # ---------------------------------------------------------------- public API

    def generate(self, seq: Sequence, sampling: SamplingParams | None = None) -> AsyncIterator[TokenDelta]:
        """Stream a completion of the sequence, appending each token to it; stop iterating to cancel."""
        params = sampling or SamplingParams()
        return self._stream(self._start(seq, params), params)

    async def shutdown(self) -> None:
        """Cut running requests, forget every sequence and close the connection pool."""
        await self._close_all()
        await self._client.aclose()

    # ---------------------------------------------------------------- requests

    def _body(self, s: ClientSeq, params: SamplingParams, api: Api) -> tuple[str, dict[str, Any]]:
        body = sampling_body(params, self._eos)
        if params.structured is not None:
            assert self._dialect is not None  # detected by _connect before the first structured request
            body.update(structured_fields(params.structured, self._dialect))
        if s.cache_salt is not None:
            body["cache_salt"] = s.cache_salt  # vLLM's per-tenant prefix-cache salt
        if self._served_model is not None:
            body["model"] = self._served_model
        body["stream"] = True
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if api == "tokens":
            body["prompt"] = list(s.tokens)
            if self.return_token_ids:
                body["return_token_ids"] = True  # vLLM >= 0.10.2 streams the generated ids with each delta
            path = "/completions"
        else:
            # Special tokens must survive as text: the server's tokenizer turns them back into the same ids.
            text = self._tok.decode(s.tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if api == "text":
                body["prompt"] = text
                path = "/completions"
            else:
                messages, partial = chat_messages(text)
                body["messages"] = messages
                if partial:  # vLLM/SGLang continue the assistant's partial answer instead of starting anew
                    body["add_generation_prompt"] = False
                    body["continue_final_message"] = True
                path = "/chat/completions"
        body.update(self.extra_body)
        return path, body

    async def _probe_model(self) -> None:
        """With model=None, ask the server which model it serves (first id of /models)."""
        if self._model_probed:
            return
        self._model_probed = True
        try:
            r = await self._client.get(self.base_url + "/models")
            if r.status_code == 200:
                data = r.json().get("data") or []
                if data and isinstance(data[0], dict) and data[0].get("id"):
                    self._served_model = self._model_name = str(data[0]["id"])
                    if data[0].get("max_model_len"):  # vLLM reports the context size
                        self._table.max_model_len = min(self._table.max_model_len, int(data[0]["max_model_len"]))
        except (httpx.HTTPError, ValueError) as exc:
            log.info("%s/models did not answer (%s); sending requests without a model name", self.base_url, exc)

    async def _detect_dialect(self) -> Dialect:
        """The server's structured-output dialect, from /models' `owned_by` (OpenAI's if it does not say)."""
        if self._dialect is None:
            try:
                r = await self._client.get(self.base_url + "/models")
                self._dialect = dialect_of(r.json()) if r.status_code == 200 else "openai"
            except (httpx.HTTPError, ValueError) as exc:
                log.info("%s/models did not answer (%s); asking for structured output as OpenAI does",
                         self.base_url, exc)
                self._dialect = "openai"
        return self._dialect

    async def _connect(self, s: ClientSeq, params: SamplingParams) -> tuple[httpx.Response, Api]:
        """Send the request until a 200 starts streaming: retries 429/5xx/refused connections, falls back."""
        await self._probe_model()
        if params.structured is not None:
            await self._detect_dialect()
        api: Api = self._api or "tokens"
        attempt = 0
        while True:
            path, body = self._body(s, params, api)
            url = self.base_url + path
            self.http.requests += 1
            try:
                resp = await self._client.send(self._client.build_request("POST", url, json=body), stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                # Nothing reached the model yet (refused, reset, or closed before a status line): safe to retry.
                if attempt < self.max_retries:
                    await self._backoff(attempt, None)
                    attempt += 1
                    continue
                raise BackendError(f"{url}: cannot connect ({describe(exc)}) after {attempt + 1} attempts; "
                                   "is the server running?") from exc
            except httpx.TimeoutException as exc:
                # Not retried: a server that stalls one request most likely stalls the next one too.
                raise BackendError(f"{url}: no response within {self.timeout_s:g} s ({describe(exc)})") from exc
            except httpx.HTTPError as exc:
                raise BackendError(f"{url}: request failed ({describe(exc)})") from exc
            if resp.status_code == 200:
                if self._api != api:
                    self._api = api
                    self.http.api = api
                return resp, api
            detail = await error_detail(resp)
            status = resp.status_code
            if api == "tokens" and self._api != "tokens" and not self._api_fixed and status not in (404, 405, 429, 503):
                # Servers reject token-id prompts in different ways (vLLM would not; llama-cpp-python answers
                # 500 with a validation error): before tokens are known to work, any refusal means "try text".
                log.info("%s refused a token-id prompt (HTTP %d: %s); trying a text prompt", url, status, detail)
                api = "text"
                self.http.fallbacks += 1
                continue
            if status in (404, 405) and api != "chat" and not self._api_fixed:
                log.info("%s has no completions endpoint (HTTP %d); using chat completions", url, status)
                api = "chat"
                self.http.fallbacks += 1
                continue
            if params.structured is not None and status in (400, 422):
                kind = type(params.structured).__name__
                raise UnsupportedFeatureError(
                    f"{url} refused a request for {kind} structured output (HTTP {status}: {detail}); the server "
                    f"does not take it as a {self._dialect} server would (set the backend option "
                    "structured_dialect), or rejects this schema or grammar")
            if status in _RETRY_STATUS and attempt < self.max_retries:
                await self._backoff(attempt, resp.headers.get("retry-after"))
                attempt += 1
                continue
            tries = f" after {attempt + 1} attempts" if attempt else ""
            raise BackendError(f"{url}: HTTP {status}{tries}: {detail}")

    async def _backoff(self, attempt: int, retry_after: str | None) -> None:
        self.http.retries += 1
        delay = min(self.backoff_s * 2**attempt, 8.0) * (1 + 0.25 * random.random())
        if retry_after:
            try:
                delay = min(max(float(retry_after), delay), 30.0)
            except ValueError:
                pass  # an HTTP date: our own backoff is good enough
        await asyncio.sleep(delay)

    async def _stream(self, s: ClientSeq, params: SamplingParams) -> AsyncIterator[TokenDelta]:
        resp: httpx.Response | None = None
        prompt_len = len(s.tokens)
        produced = 0
        usage: dict[str, Any] | None = None
        try:
            resp, api = await self._connect(s, params)
            if s.closed:  # closed while connecting: nothing to cut yet, so end here
                yield TokenDelta((), "", "abort")
                return
            s.cancel = resp.aclose
            url = str(resp.request.url)
            stops = StopMatcher(params.stop)
            to_ids = TextToIds(self._tok)
            server_ids = False  # the server streams the generated ids (vLLM return_token_ids)
            start = len(s.tokens)
            emitted = ""  # text handed out so far
            final: TokenDelta | None = None
            events = sse_events(resp, url, self.timeout_s)
            try:
                async for event in events:
                    if event.get("usage"):
                        usage = event["usage"]
                    if event.get("error"):
                        raise BackendError(f"{url}: the server reported an error mid-stream: {error_message(event)}")
                    choices = event.get("choices") or []
                    if not choices or final is not None:
                        continue  # after the finish chunk only usage is of interest
                    choice = choices[0]
                    text = choice_text(choice, api)
                    ids: list[int] = []
                    if isinstance(choice.get("token_ids"), list):
                        server_ids = True
                        ids = [int(t) for t in choice["token_ids"]]
                    out, hit = stops.push(text)
                    reason: FinishReason | None = None
                    if hit:
                        # Keep only the tokens of the text before the stop string; the request is cut below.
                        if server_ids:
                            # Server ids of held-back text are in the sequence already: rebuild its generated
                            # part so that it decodes to exactly the emitted text.
                            old = s.tokens[start:]
                            new = self._ids_for(old + ids, emitted + out)
                            same = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                                        min(len(old), len(new)))
                            del s.tokens[start + same:]
                            produced, ids = same, new[same:]
                        else:
                            ids = to_ids.push(out, final=True)
                        reason = "stop"
                    elif choice.get("finish_reason") is not None:
                        reason = finish_reason(choice["finish_reason"])
                        out += stops.flush()
                        if not server_ids:
                            ids = to_ids.push(out, final=True)
                            if reason == "stop" and self._eos:
                                ids.append(min(self._eos))  # the server stopped on end-of-text
                    elif not server_ids:
                        ids = to_ids.push(out)
                    s.tokens.extend(ids)
                    produced += len(ids)
                    emitted += out
                    if reason is not None:
                        final = TokenDelta(tuple(ids), out, reason)
                        if hit:
                            break  # our own stop: cut the request, no usage will follow
                    elif ids or out:
                        yield TokenDelta(tuple(ids), out)
            except BackendError:
                if s.closed:
                    final = TokenDelta((), "", "abort")
                elif final is None:
                    raise
                # else: the answer is complete; only the trailing usage chunk was lost
            finally:
                await events.aclose()
            if final is None:
                if not s.closed:
                    raise BackendError(f"{url}: the stream ended before the server finished the completion "
                                       f"({produced} tokens received); the server may have crashed")
                final = TokenDelta((), "", "abort")
            yield final
        except BackendError:
            self.http.failures += 1
            raise
        finally:
            if resp is not None:
                self._account_usage(s, prompt_len, produced, usage)
                await resp.aclose()
            s.cancel = None
            s.generating = False

    def _ids_for(self, ids: list[int], kept: str) -> list[int]:
        """Ids for generated text cut at a stop string: the server's tokens that lie wholly inside `kept`, then
        the rest of `kept` re-tokenized, so the sequence never holds part of a stop string."""
        out: list[int] = []
        for t in ids:
            if not kept.startswith(self._tok.decode([*out, t], clean_up_tokenization_spaces=False)):
                break
            out.append(t)
        rest = kept[len(self._tok.decode(out, clean_up_tokenization_spaces=False)):]
        return out + (list(self._tok.encode(rest, add_special_tokens=False)) if rest else [])

    def _account_usage(self, s: ClientSeq, prompt_len: int, produced: int, usage: dict[str, Any] | None) -> None:
        """Count one request: the server's usage when it sent one, else our own token counts."""
        prompt, decoded, cached = prompt_len, produced, 0
        if usage:
            prompt = int(usage.get("prompt_tokens") or prompt_len)
            decoded = int(usage.get("completion_tokens") or produced)
            details = usage.get("prompt_tokens_details") or {}
            if isinstance(details, dict) and details.get("cached_tokens") is not None:
                cached = min(int(details["cached_tokens"]), prompt)
                self.http.cache_reported = True
        self._account(s, prompt - cached, cached, decoded)


def _load_tokenizer(name: str | None) -> Any:
    """The Hugging Face tokenizer for a model name or folder (None: the default model's)."""
    from transformers import AutoTokenizer

    where = models.resolve(name)
    try:
        try:  # the local cache first: a server's model name is often no hub id, and the hub may be unreachable
            return AutoTokenizer.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError):
            return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"no tokenizer for the served model {name!r}: pass the backend option tokenizer_name=<HF id or "
            f"local folder of the same model> ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from exc
