"""The chat format in token ids: whole prompts, prompts cut at a marker, and appendable next turns.

The chat template is applied once per prompt; after that contexts only grow by appended token ids, because
re-tokenising joined text would change ids the model has already read (and its KV).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_SENT_A = "\u2063A\u2063"
_SENT_Q = "\u2063Q\u2063"


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


def as_messages(history: Sequence[Message | dict[str, str]] | None) -> list[Message]:
    """Normalise OpenAI-style dicts to Messages, rejecting roles the chat cannot hold."""
    out = []
    for i, m in enumerate(history or []):
        msg = m if isinstance(m, Message) else Message(str(m.get("role", "")), str(m.get("content", "")))
        if msg.role not in ("system", "user", "assistant"):
            raise ValueError(f"history[{i}].role must be system, user or assistant, got {msg.role!r}")
        out.append(msg)
    return out


class ChatFormat:
    """Builds token contexts for one tokenizer, keeping user and model text from forging special tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template; use an instruction-tuned model")

    @cached_property
    def _specials(self) -> list[str]:
        return sorted((t for t in self.tok.all_special_tokens if len(t) > 1), key=len, reverse=True)

    def neutralize(self, text: str) -> str:
        """Break any special-token string inside free text so the template cannot parse it as one."""
        for s in self._specials:
            if s in text:
                text = text.replace(s, s[0] + "\u200b" + s[1:])
        return text

    def encode_text(self, text: str) -> list[int]:
        """Token ids of free text (model output, references): special-token strings stay plain text."""
        return list(self.tok.encode(text, add_special_tokens=False, split_special_tokens=True))

    def _render(self, messages: Sequence[Message], generation_prompt: bool) -> str:
        convo = [{"role": m.role, "content": m.content} for m in messages]
        return self.tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=generation_prompt)

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a whole chat ending with the assistant's generation prompt."""
        head, tail = self.prompt_split(messages)
        return head + tail

    def prompt_split(self, messages: Sequence[Message], marker: str | None = None) -> tuple[list[int], list[int]]:
        """The prompt cut where `marker` stands (in the last message that holds it): what can be computed now,
        and the rest."""
        safe = [Message(m.role, self.neutralize(m.content)) for m in messages]
        if marker:
            cut = self.neutralize(marker)
            i = next((i for i in range(len(safe) - 1, -1, -1) if cut in safe[i].content), len(safe) - 1)
            safe[i] = Message(safe[i].role, safe[i].content.replace(cut, _SENT_Q, 1))
        text = self._render(safe, generation_prompt=True)
        head, _, tail = text.partition(_SENT_Q) if marker else (text, "", "")
        return self._encode_markup(head), self._encode_markup(tail)

    def _encode_markup(self, text: str) -> list[int]:
        # Template text: its special-token strings are real special tokens (contents were neutralized before).
        return list(self.tok.encode(text, add_special_tokens=False)) if text else []

    @cached_property
    def _glue(self) -> tuple[str, str]:
        # Render a two-turn chat with sentinels to learn the text between an assistant answer and the next
        # user content, and between that content and the next assistant answer.
        text = self._render([Message("user", "x"), Message("assistant", _SENT_A), Message("user", _SENT_Q)], True)
        a_end = text.index(_SENT_A) + len(_SENT_A)
        q_start = text.index(_SENT_Q)
        return text[a_end:q_start], text[q_start + len(_SENT_Q):]

    def next_turn(self, user_content: str, after_eos: bool) -> list[int]:
        """Tokens that close the assistant's answer, add a user turn and open the next answer."""
        head, tail = self.next_turn_split(user_content, after_eos)
        return head + tail

    def next_turn_split(self, user_content: str, after_eos: bool,
                        marker: str | None = None) -> tuple[list[int], list[int]]:
        """next_turn cut where `marker` stands in user_content (see prompt_split)."""
        close_open, open_answer = self._glue
        eos = self.tok.eos_token or ""
        if after_eos and eos and close_open.startswith(eos):
            close_open = close_open[len(eos):]
        before, _, after = user_content.partition(marker) if marker else (user_content, "", "")
        head = self._encode_markup(close_open) + self.encode_text(self.neutralize(before))
        tail = (self.encode_text(self.neutralize(after)) if after else []) + self._encode_markup(open_answer)
        return head, tail
