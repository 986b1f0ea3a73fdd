"""What the MoA bench commands share: their common options, and running a bench on a pipeline built for it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moa_stream import MoA, MoAConfig


def add_moa_arguments(p: argparse.ArgumentParser,
                      config_help: str = "MoA config file (YAML/TOML); default: 3 proposers, one model") -> None:
    """The options every MoA bench takes: --json, --config and --model."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--model", default=None, help="model of the default backend (default: the offline SmolLM2)")


def run_on_moa(cfg: MoAConfig, model: str | None, bench: Callable[[MoA], Awaitable[Any]]) -> Any:
    """Build the pipeline (its engines), run the bench on it, and shut the engines down whatever happens."""
    from moa_stream import MoA

    async def go() -> Any:
        moa = MoA.from_config(cfg, model=model)
        try:
            return await bench(moa)
        finally:
            await moa.aclose()

    return asyncio.run(go())
