"""`moa-stream agent` as a user runs it: a real subprocess on a tiny random model saved to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli_run import moa_stream
from tests.conftest import tiny_llama

LUCKY = "tests.moa_stream.agent.test_agent:lucky_number"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model over the default tokenizer's whole vocabulary, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("tiny-agent-model")
    lm = tiny_llama(vocab=49152)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_agent_json_prints_steps_calls_results_and_metrics(tiny_model_dir):
    proc = moa_stream("agent", "--model", str(tiny_model_dir), "--tools", LUCKY,
                      "--tool-choice", "required", "--max-steps", "2", "--max-tokens", "40", "--json",
                      "What is the lucky number?")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["tools"] == ["lucky_number"] and out["finish"] in ("answer", "length", "max_steps")
    first = out["steps"][0]
    assert first["calls"][0]["name"] == "lucky_number", "required + the grammar: step 0 is a call"
    assert first["results"][0] == {**first["results"][0], "id": first["calls"][0]["id"], "result": "84",
                                   "error": None}
    assert len(out["steps"]) == 2 and out["steps"][1]["metrics"]["prefill_computed"] > 0
    m = out["metrics"]
    assert m["tool_calls"] >= 1 and m["ttft_s"] > 0 and len(m["steps"]) == 2
    assert m["prefill_computed"] == sum(s["metrics"]["prefill_computed"] for s in out["steps"])
    # Step 1 appended only the result turn: far fewer tokens than the first prompt.
    assert out["steps"][1]["metrics"]["prefill_computed"] < first["metrics"]["prefill_computed"] / 2


def test_agent_plain_output_shows_calls_and_step_figures(tiny_model_dir):
    proc = moa_stream("agent", "--model", str(tiny_model_dir), "--tools", LUCKY,
                      "--tool-choice", "required", "--max-steps", "1", "--max-tokens", "40", "Lucky number?")
    assert proc.returncode == 0, proc.stderr
    assert "<tool_call>" in proc.stdout
    assert "[call lucky_number({})]" in proc.stderr and "[result lucky_number: 84]" in proc.stderr
    assert "step 0 | TTFT" in proc.stderr and "computed" in proc.stderr and "max_steps" in proc.stderr


def test_agent_bad_tool_specs_and_empty_tasks_are_usage_errors():
    proc = moa_stream("agent", "--tools", "bfcl:NoSuchAPI", "task")
    assert proc.returncode == 2 and "unknown BFCL class" in proc.stderr
    proc = moa_stream("agent", "--tools", "no_such_module_xyz:f", "task")
    assert proc.returncode == 2 and "cannot import" in proc.stderr
    proc = moa_stream("agent", "--tools", "bfcl:MathAPI", "", stdin="")
    assert proc.returncode == 2 and "task is empty" in proc.stderr
