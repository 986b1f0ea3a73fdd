"""Options the MoA benches share."""

from __future__ import annotations

import argparse


def add_moa_arguments(p: argparse.ArgumentParser,
                      config_help: str = "MoA config file (YAML/TOML); default: 3 proposers, one model") -> None:
    """The options every MoA bench takes: --json, --config and --model."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--model", default=None, help="model of the default backend (default: the offline SmolLM2)")
