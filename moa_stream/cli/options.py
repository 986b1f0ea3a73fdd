"""Options shared by `run`, `chat`, `serve` and `agent`: which config, mode, chunk size and model build the pipeline,
and the tool agents' context format and tool cache."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from moa_stream import MODES

if TYPE_CHECKING:
    from moa_stream import MoA, MoAConfig, ToolCacheConfig


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (bad values are usage errors, exit code 2)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"wants a positive integer, got {text!r}")
    return n


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"wants a positive number of seconds, got {text!r}")
    return value


def add_tool_agent_arguments(p: argparse.ArgumentParser, whose: str) -> None:
    """--format, --tool-cache and --tool-cache-ttl for `whose` tool-using agents."""
    from moa_stream import AGENT_FORMATS

    p.add_argument("--format", dest="agent_format", choices=list(AGENT_FORMATS), default=None,
                   help=f"context format of {whose}: an event log, each step on a fork (default: the config's, "
                        "else the chat messages)")
    p.add_argument("--tool-cache", type=positive_int, default=None, metavar="N",
                   help=f"a cache of N results answers the repeated pure calls of {whose} (default: the "
                        "config's, else off)")
    p.add_argument("--tool-cache-ttl", type=seconds, default=600.0, metavar="S",
                   help="seconds a cached result stays valid (default: 600)")


def tool_cache(args: argparse.Namespace) -> ToolCacheConfig | None:
    """The --tool-cache options as a ToolCacheConfig (None: not given)."""
    from moa_stream import ToolCacheConfig

    return None if args.tool_cache is None else ToolCacheConfig(entries=args.tool_cache, ttl_s=args.tool_cache_ttl)


def add_moa_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --mode, --chunk, --model and --max-tokens."""
    p.add_argument("--config", metavar="FILE", default=None,
                   help="MoA config (YAML or TOML); default: three proposers and an aggregator on one model")
    p.add_argument("--mode", choices=MODES, default=None, help="how the aggregator takes in the proposals "
                   "(default: the config's mode, staircase unless set)")
    p.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                   help="staircase chunk size in tokens, first chunk included (default: the config's)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="HF model id or local folder for the default backend (default: the offline SmolLM2)")
    p.add_argument("--max-tokens", type=positive_int, default=None, metavar="N",
                   help="most tokens in the answer (default: the aggregator's max_tokens)")


def load_config(args: argparse.Namespace) -> MoAConfig:
    """The config file (or the default) with --mode and --chunk applied; raises ConfigError when invalid."""
    from moa_stream import MoAConfig

    cfg = MoAConfig.load(args.config)
    update: dict[str, object] = {}
    if args.mode:
        update["mode"] = args.mode
    if args.chunk:
        update["staircase"] = cfg.staircase.with_chunk(args.chunk)
    return cfg.model_copy(update=update) if update else cfg


def build_moa(args: argparse.Namespace) -> MoA:
    """Validate the config first (fast usage errors), then load the engines."""
    from moa_stream import MoA

    cfg = load_config(args)
    return MoA.from_config(cfg, model=args.model)
