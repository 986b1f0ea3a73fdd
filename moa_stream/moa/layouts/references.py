"""Proposals as text the aggregator reads: numbered references and MoA's aggregate-and-synthesize prompt.

Classic and staircase-reprefill aggregators read them in their system prompt, and so do proposers of a
layer after the first (layer l+1 reads layer l as in classic MoA).
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import prompts
from ...agent.context import Message
from ...agent.slot import AgentSlot

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
    """The MoA aggregate-and-synthesize system prompt with the given references."""
    head = prompts.template("aggregate_system")
    body = references_block(texts, "reference_item")
    return (f"{extra}\n\n" if extra else "") + f"{head}\n{body}"


def aggregate_prompt(agg: AgentSlot, question: str, history: Sequence[Message], texts: Sequence[str]) -> list[int]:
    """Token ids of the aggregator's whole prompt with the proposals as references, up to its answer."""
    system = aggregate_system(texts, extra=agg.cfg.system_prompt)
    return agg.fmt.prompt([Message("system", system), *history, Message("user", question)])
