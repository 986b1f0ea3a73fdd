"""vLLM in-process (`AsyncLLM`) behind the engine contract: GPUs, tensor parallel, prefix caching.

vLLM keeps KV per request, not per sequence, so sequences are client-side token lists (ClientSequences) and
every generate sends the whole history: automatic prefix caching finds the blocks of everything computed
before, so an append costs about its new tokens plus the partial last block.

Where the installed vLLM has resumable streaming-input sessions (`StreamingInput`), the option
`streaming_input=True` keeps one session per sequence instead: each generate feeds only the tokens appended
since the last one into the live session, whose KV stays put. vLLM refuses stop strings in sessions, so a
generate with stop strings ends the sequence's session and runs as a plain request.

`import vllm` happens only when a VllmEngine is built; the translation helpers below are pure and tested
without vllm.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from .. import models
from ..errors import BackendError, ModelLoadError
from ..protocol import FinishReason, SamplingParams, Sequence, TokenDelta
from ..structured_output import Grammar, JsonObject, JsonSchema, StructuralTag, StructuredOutput
from .client_sequences import ClientSeq, ClientSequences

log = logging.getLogger(__name__)

# Options that are ours; every other option goes to vllm.AsyncEngineArgs.
_OWN_OPTIONS = ("streaming_input", "tokenizer_name")


def engine_args(model_path: str, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for vllm.AsyncEngineArgs: prefix caching on unless the options say otherwise."""
    args = {k: v for k, v in options.items() if k not in _OWN_OPTIONS}
    args.setdefault("enable_prefix_caching", True)
    args["model"] = model_path
    return args


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for vllm.SamplingParams (output_kind is set by the caller: it needs vllm's enum)."""
    kw: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "ignore_eos": params.ignore_eos,
        "skip_special_tokens": True,
    }
    if params.top_k > 0:  # vLLM's own default means "off"; 0 vs -1 differs between releases
        kw["top_k"] = params.top_k
    if params.seed is not None:
        kw["seed"] = params.seed
    if params.stop:
        kw["stop"] = list(params.stop)
    if params.stop_token_ids:
        kw["stop_token_ids"] = list(params.stop_token_ids)
    if params.banned_token_ids:  # OpenAI's ban, as the HTTP backend sends it
        kw["logit_bias"] = {t: -100.0 for t in sorted(set(params.banned_token_ids))}
    # Same names and meanings in vllm.SamplingParams; sent only when set, so vLLM's defaults stay in charge.
    for name, off in (("repetition_penalty", 1.0), ("frequency_penalty", 0.0), ("presence_penalty", 0.0),
                      ("min_p", 0.0)):
        if getattr(params, name) != off:
            kw[name] = getattr(params, name)
    return kw


def structured_kwargs(structured: StructuredOutput) -> dict[str, Any]:
    """Keyword arguments for vLLM's StructuredOutputsParams (GuidedDecodingParams before 0.10.2: same names)."""
    match structured:
        case JsonSchema():
            return {"json": structured.as_dict()}
        case JsonObject():
            return {"json_object": True}
        case Grammar():
            return {"grammar": structured.ebnf}
        case StructuralTag():
            return {"structural_tag": structured.spec}
    raise BackendError(f"unknown structured output {structured!r}")


def tokens_prompt(tokens: Seq[int], cache_salt: str | None = None) -> dict[str, Any]:
    """A vLLM TokensPrompt (a TypedDict, so a plain dict is one); the salt keeps tenants' prefix caches apart."""
    prompt: dict[str, Any] = {"prompt_token_ids": [int(t) for t in tokens]}
    if cache_salt is not None:
        prompt["cache_salt"] = cache_salt
    return prompt


def session_blocker(params: SamplingParams) -> str | None:
    """Why these params cannot run in a streaming-input session (None: they can)."""
    if params.stop:
        return "vLLM sessions do not take stop strings"
    return None


def session_input(tokens: Seq[int], sent: int) -> list[int]:
    """Tokens to feed a session that holds the first `sent` tokens of the sequence."""
    return [int(t) for t in tokens[sent:]]


def map_finish(raw: Any) -> FinishReason | None:
    """vLLM's finish_reason ("stop", "length", "abort", None) onto the engine's."""
    if raw is None:
        return None
    if raw == "length":
        return "length"
    if raw == "abort":
        return "abort"
    return "stop"


@dataclass(frozen=True)
class OutputDelta:
    """What one vLLM RequestOutput (DELTA kind) means for us."""

    delta: TokenDelta
    cached_tokens: int | None  # prompt tokens served from the prefix cache, when vLLM reports it
    request_finished: bool  # the whole request (or session) is over


def read_output(out: Any) -> OutputDelta:
    """Translate a vLLM RequestOutput with output_kind=DELTA (duck-typed: .outputs[0], .finished)."""
    if not getattr(out, "outputs", None):
        raise BackendError("vLLM returned an output without completions")
    comp = out.outputs[0]
    reason = map_finish(getattr(comp, "finish_reason", None))
    finished = bool(getattr(out, "finished", False))
    if finished and reason is None:
        reason = "stop"
    cached = getattr(out, "num_cached_tokens", None)
    delta = TokenDelta(tuple(int(t) for t in (comp.token_ids or ())), comp.text or "", reason)
    return OutputDelta(delta, int(cached) if cached is not None else None, finished)


def streaming_input_class() -> Any | None:
    """vLLM's StreamingInput class where the installed vLLM has sessions, else None."""
    for where in ("vllm.engine.protocol", "vllm.inputs.data", "vllm.inputs"):
        try:
            module = __import__(where, fromlist=["StreamingInput"])
        except ImportError:
            continue
        cls = getattr(module, "StreamingInput", None)
        if cls is not None:
            return cls
    return None


@dataclass
class _Session:
    """One live streaming-input request for a sequence: its input queue, output stream and what it holds."""

    inputs: asyncio.Queue[Any | None]
    outputs: AsyncIterator[Any]
    request_id: str
    sent: int = 0  # tokens of the sequence whose KV the session holds
    chunks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class VllmEngine(ClientSequences):
    """Stateful engine over vLLM's AsyncLLM: see engine.protocol.Engine for the contract."""

    def __init__(self, model: str, **options: Any) -> None:
        try:
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ModelLoadError(
                f"the vllm backend needs vLLM and a CUDA GPU: pip install 'moa-stream[vllm]' ({exc})") from exc
        self._vllm = vllm
        self._delta_kind = RequestOutputKind.DELTA
        path = models.resolve(model)
        self.streaming_input = bool(options.get("streaming_input", False))
        self._input_cls = streaming_input_class() if self.streaming_input else None
        if self.streaming_input and self._input_cls is None:
            log.warning("vLLM %s has no streaming-input sessions; using prefix-cached requests",
                        getattr(vllm, "__version__", "?"))
        args = engine_args(path, options)
        # vLLM refuses a non-zero priority unless its scheduler orders by priority: send it only then.
        self._priority = args.get("scheduling_policy") == "priority"
        try:
            self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except TypeError as exc:  # an unknown engine option
            raise ModelLoadError(f"bad vllm backend option: {exc}") from exc
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(options.get("tokenizer_name") or path)
        eos = set()
        if tok.eos_token_id is not None:
            eos.add(int(tok.eos_token_id))
        gen_eos = getattr(getattr(self._llm, "model_config", None), "hf_config", None)
        gen_eos = getattr(gen_eos, "eos_token_id", None)
        eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        vocab = max(len(tok), int(self._llm.model_config.get_vocab_size()))
        super().__init__(tok, frozenset(eos), vocab, int(self._llm.model_config.max_model_len), model)
        self._requests = itertools.count(1)
        self._sessions: dict[int, _Session] = {}

    def generate(self, seq: Sequence, sampling: SamplingParams | None = None) -> AsyncIterator[TokenDelta]:
        """Stream a completion of the sequence, appending each token to it; stop iterating to cancel."""
        params = sampling or SamplingParams()
        s = self._start(seq, params)
        if self._input_cls is not None and session_blocker(params) is None:
            return self._session_stream(s, params)
        return self._request_stream(s, params)

    async def close(self, seq: Sequence) -> None:
        """Forget the sequence, ending its session or request; idempotent."""
        await super().close(seq)
        await self._end_session(seq.id)

    async def shutdown(self) -> None:
        """End every request and session and stop vLLM."""
        await self._close_all()
        for sid in list(self._sessions):
            await self._end_session(sid)
        self._llm.shutdown()

    # ---------------------------------------------------------------- plain requests (prefix cache)

    def _priority_kwargs(self, params: SamplingParams) -> dict[str, int]:
        return {"priority": params.priority} if self._priority else {}

    def _sampling(self, params: SamplingParams) -> Any:
        kw = sampling_kwargs(params)
        if params.structured is not None:
            sp = self._vllm.sampling_params
            if hasattr(sp, "StructuredOutputsParams"):
                kw["structured_outputs"] = sp.StructuredOutputsParams(**structured_kwargs(params.structured))
            else:  # vLLM before 0.10.2
                kw["guided_decoding"] = sp.GuidedDecodingParams(**structured_kwargs(params.structured))
        return self._vllm.SamplingParams(**kw, output_kind=self._delta_kind)

    async def _request_stream(self, s: ClientSeq, params: SamplingParams) -> AsyncIterator[TokenDelta]:
        await self._end_session(s.id)  # a plain request would leave a session's KV out of step
        rid = f"moa-{self.id}-{s.id}-{next(self._requests)}"
        prompt_len = len(s.tokens)
        produced, cached = 0, 0

        async def cancel() -> None:
            await self._llm.abort(rid)

        s.cancel = cancel
        outputs = self._llm.generate(tokens_prompt(s.tokens, s.cache_salt), self._sampling(params), rid,
                                     **self._priority_kwargs(params))
        try:
            async for out in outputs:
                od = read_output(out)
                if od.cached_tokens is not None:
                    cached = od.cached_tokens
                s.tokens.extend(od.delta.token_ids)
                produced += len(od.delta.token_ids)
                yield od.delta
                if od.delta.finish_reason is not None:
                    return
            if s.closed:
                yield TokenDelta((), "", "abort")
        except Exception as exc:
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"vLLM request {rid} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            await outputs.aclose()  # aborts the request in vLLM if it is still running
            self._account(s, prompt_len - min(cached, prompt_len), min(cached, prompt_len), produced)
            s.cancel = None
            s.generating = False

    # ---------------------------------------------------------------- streaming-input sessions

    async def _session_stream(self, s: ClientSeq, params: SamplingParams) -> AsyncIterator[TokenDelta]:
        session = self._sessions.get(s.id)
        if session is None:
            session = self._open_session(s, params)
        new = session_input(s.tokens, session.sent)
        prompt = tokens_prompt(new, s.cache_salt)
        session.inputs.put_nowait(self._input_cls(prompt=prompt, sampling_params=self._sampling(params)))
        session.chunks += 1
        produced, cached, done = 0, None, False

        async def cancel() -> None:
            await self._end_session(s.id)

        s.cancel = cancel
        try:
            async for out in session.outputs:
                od = read_output(out)
                if od.cached_tokens is not None and cached is None:
                    cached = od.cached_tokens
                s.tokens.extend(od.delta.token_ids)
                produced += len(od.delta.token_ids)
                yield od.delta
                if od.delta.finish_reason is not None or od.request_finished:
                    done = True
                    break
            if not done:
                yield TokenDelta((), "", "abort")
        except Exception as exc:
            await self._end_session(s.id)
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"vLLM session {session.request_id} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if not done:
                await self._end_session(s.id)  # cancelled mid-chunk: the session's state is unknown now
            else:
                # vLLM keeps every generated token but the last (it has no KV yet): the next input re-sends it.
                session.sent = len(s.tokens) - 1 if produced else len(s.tokens)
            # Only the new tokens were sent; count the rest as reused even where vLLM does not report it.
            self._account(s, len(new), len(s.tokens) - produced - len(new), produced)
            s.cancel = None
            s.generating = False

    def _open_session(self, s: ClientSeq, params: SamplingParams) -> _Session:
        rid = f"moa-session-{self.id}-{s.id}-{next(self._requests)}"
        inputs: asyncio.Queue[Any | None] = asyncio.Queue()

        async def feed() -> AsyncIterator[Any]:
            while (item := await inputs.get()) is not None:
                yield item

        outputs = self._llm.generate(feed(), self._sampling(params), rid, **self._priority_kwargs(params))
        session = _Session(inputs, outputs, rid)
        self._sessions[s.id] = session
        return session

    async def _end_session(self, seq_id: int) -> None:
        session = self._sessions.pop(seq_id, None)
        if session is None:
            return
        session.inputs.put_nowait(None)
        aclose = getattr(session.outputs, "aclose", None)
        if aclose is not None:
            await aclose()  # aborts the session's request in vLLM
