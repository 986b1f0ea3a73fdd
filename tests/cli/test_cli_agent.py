"""`moa-stream agent` as a user runs it: a real subprocess on a tiny random model saved to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli_run import moa_stream
from tests.conftest import tiny_llama

LUCKY = "tests.moa_stream.agent.test_agent:lucky_number"
PURE_LUCKY = "tests.cli.agent_tools:pure_lucky"


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
    assert '"name": "lucky_number"' in proc.stdout, "the model's text shows its call (in a block or bare)"
    assert "[call lucky_number({})]" in proc.stderr and "[result lucky_number: 84]" in proc.stderr
    assert "step 0 | TTFT" in proc.stderr and "computed" in proc.stderr and "max_steps" in proc.stderr


def test_agent_bad_tool_specs_and_empty_tasks_are_usage_errors():
    proc = moa_stream("agent", "--tools", "bfcl:NoSuchAPI", "task")
    assert proc.returncode == 2 and "unknown BFCL class" in proc.stderr
    proc = moa_stream("agent", "--tools", "no_such_module_xyz:f", "task")
    assert proc.returncode == 2 and "cannot import" in proc.stderr
    proc = moa_stream("agent", "--tools", "bfcl:MathAPI", "", stdin="")
    assert proc.returncode == 2 and "task is empty" in proc.stderr


def test_agent_takes_further_turns_from_stdin_each_computing_its_delta_and_caches_pure_calls(tiny_model_dir):
    """Two turns on one live sequence: `--json` prints one object a turn; the second turn appends only its own
    tokens; with `--tool-cache`, its repeat of the first turn's pure call is answered from the cache."""
    proc = moa_stream("agent", "--model", str(tiny_model_dir), "--tools", PURE_LUCKY, "--tool-choice", "required",
                      "--max-steps", "1", "--max-tokens", "40", "--json", "--tool-cache", "8",
                      "What is the lucky number?", stdin="And once more?\n")
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert (first["turn"], second["turn"]) == (0, 1)
    calls = [out["steps"][0]["calls"][0] for out in (first, second)]
    assert [c["name"] for c in calls] == ["pure_lucky", "pure_lucky"]  # required + the grammar: a call each turn
    assert first["steps"][0]["results"][0]["cached"] is False
    assert second["steps"][0]["results"][0]["cached"] is (calls[0]["arguments"] == calls[1]["arguments"])
    assert second["metrics"]["tool_cache_hits"] == int(calls[0]["arguments"] == calls[1]["arguments"])
    # The second turn's prompt is the new user turn only, not the first turn's context read again.
    assert second["metrics"]["prefill_computed"] < first["metrics"]["prefill_computed"] / 2


def test_agent_format_runs_on_the_formats_event_log_and_each_turn_computes_its_delta(tiny_model_dir):
    """`--format compact`: the agent's sequence is the compact log; a second turn appends its line and cues."""
    proc = moa_stream("agent", "--model", str(tiny_model_dir), "--tools", PURE_LUCKY, "--tool-choice", "required",
                      "--max-steps", "2", "--max-tokens", "40", "--json", "--format", "compact",
                      "What is the lucky number?", stdin="And once more?\n")
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["format"] == second["format"] == "compact"
    assert first["steps"][0]["calls"][0]["name"] == "pure_lucky" and first["steps"][0]["results"][0]["error"] is None
    assert second["metrics"]["prefill_computed"] < first["metrics"]["prefill_computed"] / 2
    proc = moa_stream("agent", "--format", "xml", "task")
    assert proc.returncode == 2 and "invalid choice: 'xml'" in proc.stderr


def test_agent_runs_a_configs_agent_with_its_tools(tiny_model_dir, tmp_path):
    """`--config`: the config's first proposer with tools runs on its backend, with its tool settings."""
    import yaml

    cfg = {"backends": {"default": {"kind": "transformers", "model": str(tiny_model_dir)}},
           "layers": [[{"name": "plain", "max_tokens": 8},
                       {"name": "caller", "tools": [PURE_LUCKY], "tool_choice": "required", "max_tool_steps": 1,
                        "max_tokens": 40, "temperature": 0.0, "tool_cache": {"entries": 4}}]],
           "aggregator": {"name": "aggregator"}}
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = moa_stream("agent", "--config", str(path), "--json", "Lucky number?")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["tools"] == ["pure_lucky"] and out["steps"][0]["calls"][0]["name"] == "pure_lucky"
    proc = moa_stream("agent", "--config", str(path), "--agent", "nobody", "task")
    assert proc.returncode == 2 and "no agent named 'nobody'" in proc.stderr
