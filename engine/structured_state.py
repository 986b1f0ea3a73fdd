"""Structured output as a token mask: xgrammar compiles a request's schema or grammar, a matcher follows each
generation token by token and says which tokens may come next.

One `Structurer` per (tokenizer, model vocabulary): it holds xgrammar's compiler (building the tokenizer's
table takes a fraction of a second, so it is done once) and an LRU of compiled grammars keyed by the request
value, so agents that ask for the same tool schema every step compile it once. Each generation gets its own
`StructuredState` (a matcher and a one-row bitmask).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import xgrammar as xgr

from .errors import InvalidSamplingError
from .structured_output import Grammar, JsonObject, JsonSchema, StructuralTag, StructuredOutput

__all__ = ["StructuredState", "Structurer", "structurer_for"]

GRAMMAR_CACHE_SIZE = 64  # compiled grammars kept per tokenizer; a tool-using agent reuses a handful


class StructuredState:
    """One generation's progress through its grammar: which tokens may come next, and whether it is complete."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size

    def mask(self, logits_row: torch.Tensor) -> None:
        """Set the logits of every token the grammar forbids next to -inf, in place (a 1-D row)."""
        if self._matcher.is_terminated():
            return  # nothing may follow; the engine ends the generation before sampling again
        if not self._matcher.fill_next_token_bitmask(self._bitmask):
            return  # every token is allowed here (free text of a structural tag)
        # The model's row may be longer than the tokenizer's table (a padded lm_head): those ids are never
        # allowed, and ids past the bitmask would not be touched by xgrammar, so cut them here.
        row = logits_row[: self._vocab_size].unsqueeze(0)
        bitmask = self._bitmask.to(logits_row.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(row, bitmask, vocab_size=self._vocab_size)
        if logits_row.shape[-1] > self._vocab_size:
            logits_row[self._vocab_size:] = float("-inf")

    def accept(self, token: int) -> bool:
        """Advance past a sampled token; False if the grammar does not allow it here (state unchanged)."""
        return bool(self._matcher.accept_token(int(token)))

    def rollback(self, count: int) -> None:
        """Undo the last `count` accepted tokens (a verified draft the engine accepts again as it emits it)."""
        self._matcher.rollback(count)

    @property
    def done(self) -> bool:
        """Whether the grammar has ended (a stop token was accepted after a complete output)."""
        return bool(self._matcher.is_terminated())


class Structurer:
    """Compiles structured-output requests for one tokenizer and model vocabulary, with an LRU of results."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int],
                 cache_size: int = GRAMMAR_CACHE_SIZE) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(set(stop_token_ids)) or None)
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[StructuredOutput, xgr.CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # generate() may be called from several threads' event loops

    def compile(self, structured: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar of a request (cached); InvalidSamplingError naming what is wrong with it."""
        with self._lock:
            hit = self._cache.get(structured)
            if hit is not None:
                self._cache.move_to_end(structured)
                return hit
        compiled = self._compile(structured)
        with self._lock:
            self._cache[structured] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def start(self, structured: StructuredOutput, resume: Sequence[int] = ()) -> StructuredState:
        """The state of one generation under `structured`, past the tokens `resume` says are already written."""
        state = StructuredState(self.compile(structured), self.vocab_size)
        for i, token in enumerate(resume):
            if not state.accept(token):
                raise InvalidSamplingError(f"structured_resume[{i}] (token {token}) does not fit the grammar there; "
                                           "resume with exactly the tokens generated under it")
        return state

    def _compile(self, structured: StructuredOutput) -> xgr.CompiledGrammar:
        try:
            match structured:
                case JsonSchema():
                    return self._compiler.compile_json_schema(structured.schema, any_whitespace=False)
                case JsonObject():
                    return self._compiler.compile_builtin_json_grammar()
                case Grammar():
                    return self._compiler.compile_grammar(structured.ebnf)
                case StructuralTag():
                    return self._compiler.compile_structural_tag(structured.spec)
        except (RuntimeError, ValueError, TypeError) as exc:
            # xgrammar's messages start with a "[time] file.cc:line:" prefix; keep only what names the problem.
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = why.split(": ", 1)[1] if why.startswith("[") and ": " in why else why
            why = why.split(" is false: ", 1)[-1]  # an internal check's condition says nothing to the caller
            kind = type(structured).__name__
            raise InvalidSamplingError(f"structured output {kind} cannot be compiled: {why}") from exc
        raise InvalidSamplingError(f"unknown structured output {structured!r}")


_structurers: weakref.WeakKeyDictionary[Any, dict[tuple[int, frozenset[int]], Structurer]] = (
    weakref.WeakKeyDictionary())
_structurers_lock = threading.Lock()


def structurer_for(tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> Structurer:
    """The Structurer of this tokenizer and vocabulary, built on first use and shared by every engine using them."""
    stops = frozenset(int(t) for t in stop_token_ids)
    with _structurers_lock:
        per_tok = _structurers.setdefault(tokenizer, {})
        found = per_tok.get((vocab_size, stops))
        if found is None:
            found = per_tok[(vocab_size, stops)] = Structurer(tokenizer, vocab_size, stops)
        return found
