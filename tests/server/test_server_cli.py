"""`moa-stream serve` as a real process on loopback: starts, answers the openai client, stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.cli.test_cli_run import ROOT, small_config


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_the_openai_client_and_stops_cleanly(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--config", str(small_config(tmp_path)),
                             "--port", str(port), "--api-key", "k3y", "--max-concurrency", "2", "--max-tokens", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # bounded wait for the model to load and the port to open
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
        assert "moa-stream:staircase" in [m.id for m in client.models.list()]
        resp = client.chat.completions.create(model="moa-stream", max_tokens=4,
                                              messages=[{"role": "user", "content": "Say hello."}])
        assert resp.choices[0].message.content and resp.model_extra["moa"]["ttft_s"] > 0
        assert resp.usage.completion_tokens <= 2  # --max-tokens caps what the request asked
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/moa/stats", headers={"Authorization": "Bearer k3y"}).json()
        assert stats["engines"]["default"]["sequences_open"] == 0 and stats["max_concurrency"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v1" in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--port", "70000"], "port"),
    (["--timeout", "0"], "request_timeout_s"),
    (["--max-concurrency", "0"], "positive integer"),
    (["--max-body-bytes", "10"], "max_body_bytes"),
    (["--compile-timeout", "0"], "compile_timeout_s"),
    (["--config", "/nonexistent.yaml"], "not found"),
])
def test_serve_rejects_bad_settings_with_exit_2(args, needle):
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and needle in proc.stderr
