"""Context formats in token ids: chat prompts, appendable turns, and the three aggregator layouts.

The chat template is applied once per prompt; after that contexts only grow by appended token ids, because
re-tokenising joined text would change ids the model has already read (and its KV).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from . import prompts

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
        safe = [Message(m.role, self.neutralize(m.content)) for m in messages]
        text = self._render(safe, generation_prompt=True)
        return list(self.tok.encode(text, add_special_tokens=False))

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
        close_open, open_answer = self._glue
        eos = self.tok.eos_token or ""
        if after_eos and eos and close_open.startswith(eos):
            close_open = close_open[len(eos):]
        return (list(self.tok.encode(close_open, add_special_tokens=False))
                + self.encode_text(self.neutralize(user_content))
                + list(self.tok.encode(open_answer, add_special_tokens=False)))


_DELIMITERS = ("[more from", "[end of more]", "[model ")


def escape_delimiters(text: str) -> str:
    """Keep proposer text from opening or closing our staircase blocks: [ becomes ( in delimiter look-alikes."""
    for d in _DELIMITERS:
        if d in text:
            text = text.replace(d, "(" + d[1:])
    return text.replace("(end of more]", "(end of more)")


def references_block(texts: Sequence[str | None], item_template: str) -> str:
    """Numbered references (1-based, by proposer position); proposers with no text are left out."""
    return "\n".join(prompts.render(item_template, index=i + 1, text=escape_delimiters(t.strip()))
                     for i, t in enumerate(texts) if t and t.strip())


def aggregate_system(texts: Sequence[str | None], extra: str | None = None) -> str:
    """The MoA aggregate-and-synthesize system prompt with the given references (classic layout)."""
    head = prompts.template("aggregate_system")
    body = references_block(texts, "reference_item")
    return (f"{extra}\n\n" if extra else "") + f"{head}\n{body}"


def staircase_user(question: str, first_chunks: Sequence[str | None]) -> str:
    """The staircase user turn: the question and the first chunk of each proposal that has one."""
    refs = references_block(first_chunks, "staircase_reference") or "(none yet)"
    return prompts.render("staircase_user", question=question, references=refs)


def staircase_more(index: int, text: str) -> str:
    """A later chunk of proposal `index` (0-based), appended after the aggregator's partial answer."""
    return prompts.render("staircase_more", index=index + 1, text=escape_delimiters(text))


def more_marker() -> str:
    """The opening of a staircase block: the aggregator must never write one itself."""
    return prompts.template("more_marker")
