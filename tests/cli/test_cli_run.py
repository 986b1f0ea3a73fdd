"""`moa-stream run` as a user runs it: a real subprocess on the real default model, short answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def small_config(tmp_path: Path, proposer_tokens: int = 16, answer_tokens: int = 16, **extra: object) -> Path:
    """A YAML config: two proposers and an aggregator with short outputs (a turn takes seconds)."""
    cfg = {
        "mode": "staircase",
        "layers": [[
            {"name": "analyst", "system_prompt": "You are a careful analyst. Answer concisely.",
             "temperature": 0.7, "seed": 1, "max_tokens": proposer_tokens},
            {"name": "explainer", "system_prompt": "You are a patient teacher. Explain in plain words.",
             "temperature": 0.8, "seed": 2, "max_tokens": proposer_tokens},
        ]],
        "aggregator": {"name": "aggregator", "temperature": 0.0, "max_tokens": answer_tokens},
        "staircase": {"first_chunk_tokens": 4, "chunk_tokens": 4, "aggregator_tokens_per_intake": 4},
        **extra,
    }
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def moa_stream(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as the console script would."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_run_streams_the_answer_to_stdout_and_ttft_to_stderr(tmp_path):
    cfg = small_config(tmp_path)
    proc = moa_stream("run", "--config", str(cfg), "Why is the sky blue?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "\x1b[" not in proc.stdout
    assert "[TTFT " in proc.stderr and "| total " in proc.stderr and "chunks ingested" in proc.stderr


def test_run_json_prints_answer_and_metrics(tmp_path):
    cfg = small_config(tmp_path)
    proc = moa_stream("run", "--config", str(cfg), "--json", "--mode", "classic", "--max-tokens", "5",
                      "Name a primary color.")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    m = out["metrics"]
    assert out["answer"] and m["mode"] == "classic"
    assert 0 < m["ttft_s"] <= m["total_s"]
    assert m["answer_tokens"] <= 5, "--max-tokens caps the aggregator's answer"
    assert set(m["agents"]) == {"analyst", "explainer", "aggregator"}
    assert m["prefill_saved"] >= 0 and out["errors"] == []


def test_run_chunk_sets_the_staircase_chunk_size(tmp_path):
    """Chunks of 2 tokens reach the aggregator in more pieces than chunks of 16 (whole 16-token proposals); the
    answer is long enough for intakes between its steps (none are made once the answer's budget is spent)."""
    cfg = small_config(tmp_path)
    runs = {}
    for chunk in ("2", "16"):
        proc = moa_stream("run", "--config", str(cfg), "--json", "--chunk", chunk, "--max-tokens", "12",
                          "Why is the sea salty?")
        assert proc.returncode == 0, proc.stderr
        runs[chunk] = json.loads(proc.stdout)["metrics"]["chunks_ingested"]
    assert runs["2"] > runs["16"]


def test_run_reads_the_question_from_a_pipe(tmp_path):
    proc = moa_stream("run", "--config", str(small_config(tmp_path)), "--mode", "single", "-q",
                      stdin="Say hello.\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and proc.stderr.count("TTFT") == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--config", "/nonexistent/moa.yaml", "q"], "not found"),
    (["--mode", "fastest", "q"], "invalid choice"),
    (["--chunk", "0", "q"], "positive integer"),
    (["--max-tokens", "-3", "q"], "positive integer"),
    ([""], "question is empty"),
    (["--model", "/nonexistent/model", "q"], "/nonexistent/model"),
])
def test_bad_usage_exits_2_with_a_message(args, needle):
    proc = moa_stream("run", *args, stdin="")
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_an_invalid_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"layers": [[{"name": "a", "temperature": 5}]], "aggregator": {"name": "b"}}))
    proc = moa_stream("run", "--config", str(bad), "q")
    assert proc.returncode == 2
    assert "layers.0.0.temperature" in proc.stderr


def test_a_runtime_failure_exits_1(tmp_path):
    """Every proposer's prompt is longer than the model accepts: all fail at open, the run cannot answer."""
    too_long = "word " * 9000
    cfg = small_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    for agent in data["layers"][0]:
        agent["system_prompt"] = too_long
    cfg.write_text(yaml.safe_dump(data))
    proc = moa_stream("run", "--config", str(cfg), "Why is the sky blue?")
    assert proc.returncode == 1
    assert "all 2 proposers failed" in proc.stderr
