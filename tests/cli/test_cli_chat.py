"""`moa-stream chat` as a person uses it: in a real pseudo-terminal (pexpect), and piped.

The terminal test types questions, watches the live proposer panels and the TTFT status line, switches mode,
presses Ctrl-C in the middle of an answer, checks that the cancelled turn freed its sequences, and quits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pexpect

from .test_cli_run import ROOT, small_config

PROMPT = "you>"
FINAL_STATUS = r"TTFT \d+\.\d\d s \| total \d+\.\d\d s \| [\d.]+ tok/s \| \d+ answer tokens \| \d+ chunks ingested"


def spawn_chat(*args: str) -> pexpect.spawn:
    """The chat in a 140x45 pseudo-terminal, as a terminal emulator would run it."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "45"}
    env.pop("NO_COLOR", None)
    return pexpect.spawn(sys.executable, [str(ROOT / "cli.py"), "chat", *args], cwd=str(ROOT), env=env,
                         dimensions=(45, 140), encoding="utf-8", timeout=180)


def test_chat_in_a_terminal(tmp_path):
    # Proposers write up to 24 tokens and the answer up to 32, so a turn lasts seconds: long enough to
    # interrupt, short enough for the suite.
    child = spawn_chat("--config", str(small_config(tmp_path, proposer_tokens=24, answer_tokens=32)))
    try:
        child.expect("proposers analyst, explainer -> aggregator")
        child.expect(PROMPT)

        child.sendline("Why is the sky blue?")
        child.expect("analyst")  # a live panel per proposer
        child.expect("explainer")
        child.expect("answer")
        child.expect_exact("staircase | TTFT")
        child.expect(r"staircase \| " + FINAL_STATUS)
        child.expect(PROMPT)

        child.sendline("/mode classic")
        child.expect("mode: classic")
        child.expect(PROMPT)
        child.sendline("Name a primary color.")
        child.expect(r"classic \| " + FINAL_STATUS)
        child.expect(PROMPT)

        child.sendline("/mode staircase")
        child.expect("mode: staircase")
        child.sendline("/start at_once")
        child.expect("start: at_once")
        child.sendline("Name a secondary color.")
        child.expect(r"staircase \| " + FINAL_STATUS)
        child.expect(PROMPT)
        child.sendline("/start soon")
        child.expect(r"usage: /start all\|first\|at_once \(now at_once\)")
        child.sendline("/start all")
        child.expect("start: all")

        child.sendline("/chunk 2")
        child.expect("chunk: 2 tokens")
        child.sendline("/proposers off")
        child.expect("proposers: hidden")
        child.sendline("/proposers on")
        child.expect("proposers: shown")
        child.sendline("/mode staircase")
        child.expect("mode: staircase")
        child.expect(PROMPT)

        # Ctrl-C while the turn is still waiting for its first answer token cancels only that answer.
        child.sendline("Tell me about the moon and the tides.")
        child.expect("TTFT waiting")
        child.sendintr()
        child.expect("cancelled")
        child.expect("answer cancelled")
        child.expect(PROMPT)

        child.sendline("/stats")
        child.expect(r"turns: 3 \| mode staircase \| chunk 2/2 tokens \| start all")
        child.expect("engine default: sequences open 0,")  # the cancelled turn freed every sequence
        child.expect(PROMPT)

        child.sendline("/reset")
        child.expect("conversation reset")
        child.sendline("/bogus")
        child.expect("unknown command /bogus")
        child.expect(PROMPT)

        child.sendintr()  # at the prompt: a hint first
        child.expect("Ctrl-C again or /quit")
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_two_ctrl_c_at_the_prompt_leave(tmp_path):
    child = spawn_chat("--config", str(small_config(tmp_path)))
    try:
        child.expect(PROMPT)
        child.sendintr()
        child.expect("Ctrl-C again")
        child.sendintr()
        child.expect("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_a_second_ctrl_c_while_the_hint_prints_still_leaves(tmp_path):
    # The second press lands while the first is being handled (hint printing, prompt about to be read): the
    # window where a blocking input() lost it, or where KeyboardInterrupt escaped the loop half-handled.
    child = spawn_chat("--config", str(small_config(tmp_path)))
    try:
        child.expect(PROMPT)
        child.sendintr()
        time.sleep(0.05)
        child.sendintr()
        child.expect("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_in_a_pipe_is_plain_text(tmp_path):
    lines = "Why is the sky blue?\n/mode classic\nName a primary color.\n/stats\n"  # then end of input
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "chat", "--config", str(small_config(tmp_path))],
                          input=lines, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout and "\x1b[" not in proc.stderr
    answers = [a for a in proc.stdout.split("\n") if a.strip()]
    assert len(answers) >= 2  # stdout carries only the answers
    assert proc.stderr.count("[TTFT ") == 2
    assert "mode: classic" in proc.stderr
    assert "[staircase | TTFT" in proc.stderr and "[classic | TTFT" in proc.stderr
    assert "sequences open" in proc.stderr


def test_chat_with_a_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [1, 2\n")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "chat", "--config", str(bad)], input="",
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
