"""Module-level tools the `moa-stream agent` tests name on the command line (the subprocess imports them)."""

from __future__ import annotations

from moa_stream.tools import Tool


def _lucky() -> int:
    """Today's lucky number."""
    return 84


# Declared pure (no side effects, same arguments give the same result): the tool cache may answer a repeat.
pure_lucky = Tool.from_function(_lucky, name="pure_lucky", pure=True)
