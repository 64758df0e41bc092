"""`lmgen repl` through a real pseudo-terminal: typing, commands, Ctrl-C, Ctrl-D, history."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = "lmgen> "


@pytest.fixture
def repl(tiny_checkpoint, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", LMGEN_CACHE=str(tmp_path),
               HOME=str(tmp_path), TERM="dumb")
    # started with SIGINT ignored, as a background job of a script would be (and as some
    # test runners' workers are): the REPL must still turn Ctrl-C into a stop
    child = pexpect.spawn(sys.executable, ["-m", "lmgen", "repl", str(tiny_checkpoint), "--seed", "1"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    child.expect_exact(PROMPT)
    yield child
    if child.isalive():
        child.terminate(force=True)


def test_prompt_commands_errors_and_ctrl_d(repl, tmp_path):
    assert "char tokenizer" in repl.before and "sampling: temperature 0.8" in repl.before
    repl.sendline(":greedy")
    repl.expect_exact("greedy;")
    repl.expect_exact(PROMPT)
    repl.sendline("The cat")
    repl.expect(r"The cat[^\n]*\r?\n")
    repl.expect_exact(PROMPT)
    repl.sendline("")  # an empty line continues the text
    repl.expect_exact(PROMPT)
    repl.sendline(":show")
    repl.expect(r"greedy; .* seed 1; (\d+) tokens of text")
    repl.expect_exact(PROMPT)
    repl.sendline(":top-p 1.5")  # a bad value: the message, the help, and the session goes on
    repl.expect_exact(":top-p must be in (0, 1], got 1.5")
    repl.expect_exact(":help")
    repl.expect_exact(PROMPT)
    repl.sendline(":precision float32")
    repl.expect_exact("weights float32;")
    repl.expect_exact(PROMPT)
    repl.sendline(":precision int8")
    repl.expect_exact(":precision must be one of float32, float16, auto")
    repl.expect_exact(PROMPT)
    repl.sendline(":frobnicate")
    repl.expect_exact("unknown command :frobnicate")
    repl.expect_exact(PROMPT)
    repl.sendline(":temp 0.5")
    repl.expect_exact("sampling: temperature 0.5")
    repl.expect_exact(PROMPT)
    repl.sendline(":beam 3")
    repl.expect_exact("beam search: width 3")
    repl.expect_exact(PROMPT)
    repl.sendline("def f")
    repl.expect(r"def f[^\n]*\r?\n")
    repl.expect_exact(PROMPT)
    repl.sendline(":reset")
    repl.expect_exact("text forgotten")
    repl.expect_exact(PROMPT)
    repl.sendcontrol("d")  # Ctrl-D quits cleanly
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0
    history = (tmp_path / "repl_history").read_text()
    assert ":top-p 1.5" in history and "The cat" in history


def test_ctrl_c_stops_generation_and_keeps_the_session(repl):
    repl.sendline(":max 1000000")
    repl.expect_exact(PROMPT)
    repl.sendline(":min 1000000")  # no [END]: it is still generating when Ctrl-C comes
    repl.expect_exact(PROMPT)
    repl.sendline("The ")
    repl.expect(r"The .{200}", timeout=60)  # streaming has begun
    time.sleep(0.2)
    repl.sendintr()
    repl.expect_exact("[interrupted]", timeout=30)
    repl.expect_exact(PROMPT)
    repl.sendline(":show")
    repl.expect(r"(\d+) tokens of text")
    assert int(repl.match.group(1)) > 200
    repl.expect_exact(PROMPT)
    repl.sendline(":max 20")
    repl.expect_exact(PROMPT)
    repl.sendline(":min 20")
    repl.expect_exact(PROMPT)
    repl.sendline(":continue  and")  # continues the interrupted text with its state
    repl.expect_exact("[max 20 tokens]")
    repl.expect_exact(PROMPT)
    repl.sendline(":quit")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0
