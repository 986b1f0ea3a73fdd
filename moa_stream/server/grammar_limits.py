"""Bounds on what a client's JSON schema may cost to compile: its size, and the repeats its regex patterns ask for.

xgrammar expands a bounded repeat `x{m,n}` into n copies of x, and its compile time grows faster than n (here:
`^(ab|cd){1,500}$` 0.13 s, `{1,1000}` 0.30 s, `{1,2000}` 1.35 s, `{1,6000}` 23 s). A nested repeat multiplies.
So each pattern's *repeat weight* (every atom counted once per copy the repeats make of it) is capped before
anything is compiled; the compile also runs under a time limit, for whatever costs time some other way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import APIError


@dataclass(frozen=True)
class GrammarLimits:
    """The most a schema may be: its JSON size in bytes and each regex pattern's repeat weight."""

    max_schema_bytes: int = 65_536
    max_repeat_weight: int = 4_096


def _bound(pattern: str, i: int) -> tuple[int, int] | None:
    """The largest count of a `{m}`, `{m,}` or `{m,n}` quantifier starting at pattern[i], and the index past it."""
    end = pattern.find("}", i)
    if end < 0:
        return None
    low, comma, high = pattern[i + 1:end].partition(",")
    if not low.strip().isdigit() or (high.strip() and not high.strip().isdigit()):
        return None  # not a quantifier: a literal brace
    count = int(high) if comma and high.strip() else int(low)
    return count, end + 1


def repeat_weight(pattern: str) -> int:
    """How many atoms the pattern expands to when every bounded repeat is written out (an upper bound).

    Groups weigh the sum of what they hold (alternatives too); `*`, `+`, `?` and `{m,}` add no copies past m.
    """
    stack: list[list[int]] = [[]]  # the weights of the atoms of each open group
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            stack[-1].append(1)
            i += 2
            continue
        if c == "[":  # a character class is one atom
            j = i + 1
            while j < len(pattern) and (pattern[j] != "]" or j == i + 1):
                j += 2 if pattern[j] == "\\" else 1
            stack[-1].append(1)
            i = j + 1
            continue
        if c == "(":
            stack.append([])
        elif c == ")" and len(stack) > 1:
            inner = stack.pop()
            stack[-1].append(max(1, sum(inner)))
        elif c == "{" and (bound := _bound(pattern, i)) is not None:
            count, i = bound
            if stack[-1]:
                stack[-1][-1] *= max(count, 1)
            continue
        elif c not in "|*+?^$":
            stack[-1].append(1)
        i += 1
    while len(stack) > 1:  # an unclosed group: xgrammar refuses it later, count what it holds
        inner = stack.pop()
        stack[-1].append(sum(inner))
    return sum(stack[0])


def _patterns(node: Any, path: str) -> list[tuple[str, str]]:
    """Every regex in a schema (`pattern` values and `patternProperties` keys) with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                found.append((f"{path}.pattern", value))
            elif key == "patternProperties" and isinstance(value, dict):
                found += [(f"{path}.patternProperties", k) for k in value]
            found += _patterns(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _patterns(item, f"{path}[{i}]")
    return found


def check_schema(schema: Any, where: str, param: str, limits: GrammarLimits) -> None:
    """Raise a 400 APIError naming `where` when the schema is too large or a pattern repeats too much."""
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > limits.max_schema_bytes:
        raise APIError(400, f"{where}: the schema is {size} bytes; the server compiles at most "
                       f"{limits.max_schema_bytes}", param=param, code="schema_too_large")
    for at, pattern in _patterns(schema, where):
        weight = repeat_weight(pattern)
        if weight > limits.max_repeat_weight:
            raise APIError(400, f"{at}: the pattern {pattern[:80]!r} repeats to {weight} atoms when written out; "
                           f"the server compiles at most {limits.max_repeat_weight} (use smaller {{m,n}} bounds)",
                           param=param, code="schema_too_complex")
