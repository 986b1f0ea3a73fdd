"""`moa-stream bench agent` as a user runs it: a tiny run on a tiny random model, and its usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli_agent import tiny_model_dir  # noqa: F401 (a fixture)
from tests.cli.test_cli_run import moa_stream

pytest.importorskip("bfcl_eval")


def test_bench_agent_json_on_the_transformers_backend_has_every_field(tiny_model_dir: Path) -> None:  # noqa: F811
    proc = moa_stream("bench", "agent", "--json", "--backend", "transformers", "--model", str(tiny_model_dir),
                      "--agents", "1", "--steps", "2", "--cases", "4", "--modes", "stateful,reprefill",
                      "--tool-latency-ms", "0", "--no-llamacpp", "--no-speculation", "--prompt-lookup-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("ratio_reprefill_6", "ratio_reprefill_35", "ratio_prefix_cache_8", "ratio_llamacpp_8",
                "speculation_saving_200ms", "speculation_alpha", "prompt_lookup_speedup", "prompt_lookup_acceptance"):
        assert key in result
    assert result["setup"]["backend"] == "transformers"
    assert result["speculation_saving_200ms"] is None and result["speculation"] == {"skipped": "off"}
    assert result["prompt_lookup_speedup"] > 0 and result["prompt_lookup"]["on"]["draft_tokens"] >= 0
    assert {r["mode"] for r in result["runs"]} == {"stateful", "reprefill"}


def test_bench_agent_usage_errors() -> None:
    proc = moa_stream("bench", "agent", "--speculator", "crystal-ball", "--no-llamacpp")
    assert proc.returncode == 2 and "crystal-ball" in proc.stderr
    proc = moa_stream("bench", "agent", "--speculation-latencies", "0,-5")
    assert proc.returncode == 2 and "milliseconds" in proc.stderr
    proc = moa_stream("bench", "agent", "--kv-fraction", "0.9,x")
    assert proc.returncode == 2 and "fractions" in proc.stderr
