"""The engine bench and `moa-stream bench engine`: contract fields present and consistent (figures not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from engine import InvalidTokensError
from engine.transformers_engine import TransformersEngine
from eval.bench.engine import run_engine_bench

CONTRACT = ("reprefill_ms", "append_ms", "append_speedup", "append_tokens_computed", "tok_s_1", "tok_s_4",
            "batch_speedup")
SAMPLED_FIELDS = ("sampled_tok_s_1", "sampled_tok_s_4", "sampled_vs_greedy_1", "sampled_vs_greedy_4")


async def test_bench_on_tiny_model_reports_contract_fields(tiny_engine: TransformersEngine) -> None:
    """The bench measures what it claims: delta tokens computed by the append, nothing by the fork, reuse."""
    result = await run_engine_bench(tiny_engine, context_tokens=96, delta_tokens=8, decode_tokens=4,
                                    streams=(1, 2, 4), repeats=2)
    out = result.to_dict()
    for key in CONTRACT:
        assert isinstance(out[key], int | float) and out[key] > 0, key
    assert out["append_tokens_computed"] == 8
    assert out["reprefill_tokens_computed"] == 96 + 8
    assert out["fork_tokens_computed"] == 0
    assert out["prefix_open_tokens_computed"] == 8
    assert out["prefix_open_tokens_reused"] == 96
    assert out["append_speedup"] == pytest.approx(out["reprefill_ms"] / out["append_ms"], rel=0.02)
    assert out["batch_speedup"] == pytest.approx(out["tok_s_4"] / out["tok_s_1"], rel=0.02)
    assert set(out["tok_s"]) == {"1", "2", "4"} and out["tok_s_2"] == out["tok_s"]["2"]
    for n in (1, 4):
        assert out[f"sampled_tok_s_{n}"] > 0
        # The ratio is rounded to 2 decimals apart from the rates: 0.005 either way (2% of a ratio near 0.25).
        ratio = out[f"sampled_tok_s_{n}"] / out[f"tok_s_{n}"]
        assert out[f"sampled_vs_greedy_{n}"] == pytest.approx(ratio, abs=0.006)
    with pytest.raises(InvalidTokensError, match="--context"):
        await run_engine_bench(tiny_engine, context_tokens=tiny_engine.max_model_len)
    json.dumps(out)
    st = tiny_engine.stats()
    assert (st.sequences_open, st.kv_bytes_resident) == (0, 0), "the bench closes what it opens"


def test_bench_rejects_bad_arguments() -> None:
    """Bad bench options are usage errors (exit 2) before any model loads."""
    assert cli.main(["bench", "engine", "--streams", "0"]) == 2
    assert cli.main(["bench", "engine", "--context", "-5"]) == 2
    assert cli.main(["bench", "nothing"]) == 2
    args = cli.build_parser().parse_args(["bench", "engine", "--json", "--streams", "1,4,8", "--delta", "32"])
    assert (args.json, args.streams, args.delta, args.context) == (True, (1, 4, 8), 32, 2048)


def test_bench_engine_cli_prints_one_json_object(tmp_path: Path) -> None:
    """`moa-stream bench engine --json --model <folder>` end to end, on a tiny model saved to a folder."""
    from tests.conftest import tiny_llama

    tiny = tiny_llama()
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "engine", "--json", "--model", str(tmp_path), "--context", "64",
         "--delta", "8", "--decode", "3", "--streams", "1,4"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    assert all(key in out for key in CONTRACT + SAMPLED_FIELDS)
    assert out["append_tokens_computed"] == 8 and out["context_tokens"] == 64

    missing = subprocess.run([sys.executable, "-m", "cli", "bench", "engine", "--model", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path.parent,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "nope" in missing.stderr
