"""The text a chat template puts around message contents, learned once by rendering sentinels.

Agent formats append one message at a time, so they need the template's text between two messages and the text
that opens the model's answer, not whole-prompt renders. Rendering a tiny conversation whose contents are
sentinels and cutting between them gives exactly what a whole-prompt render would hold there.
"""

from __future__ import annotations

from typing import Any

_S0, _S1 = "\u2063S0\u2063", "\u2063S1\u2063"


class TemplateGlue:
    """Template text around contents for one tokenizer (cached per role pair)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self._cache: dict[tuple[str, str, str], str] = {}

    def _render(self, messages: list[tuple[str, str]], generation_prompt: bool) -> str:
        convo = [{"role": r, "content": c} for r, c in messages]
        return self.tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=generation_prompt)

    def _lead(self, prev: str) -> list[tuple[str, str]]:
        # A conversation whose last message has role `prev` and content _S0 (templates want a system first).
        return [(prev, _S0)] if prev == "system" else [("system", "x"), (prev, _S0)]

    def opening(self) -> str:
        """The text before the system message's content (the start of every prompt)."""
        key = ("open", "system", "")
        if key not in self._cache:
            text = self._render([("system", _S0)], False)
            self._cache[key] = text[:text.index(_S0)]
        return self._cache[key]

    def between(self, prev: str, role: str) -> str:
        """The text from the end of a `prev` message's content to the start of the next (`role`) message's."""
        key = ("between", prev, role)
        if key not in self._cache:
            text = self._render([*self._lead(prev), (role, _S1)], False)
            self._cache[key] = text[text.index(_S0) + len(_S0):text.index(_S1)]
        return self._cache[key]

    def answer_cue(self, prev: str) -> str:
        """The text from the end of a `prev` message's content through the prompt that opens the model's answer."""
        key = ("cue", prev, "")
        if key not in self._cache:
            text = self._render(self._lead(prev), True)
            self._cache[key] = text[text.index(_S0) + len(_S0):]
        return self._cache[key]
