"""The REPL for writers, through a real pseudo-terminal: :pick, :probs, :save, multi-line
prompts. Oracles: the model's probabilities from a fresh forward pass, a naive greedy loop."""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch

pexpect = pytest.importorskip("pexpect")

PROMPT = "lmgen> "
ROW = re.compile(r"^\s+(\d+)\. (.+?)\s+([\d.]+)%$", re.M)
BANDS = ((0.7, "32"), (0.3, "33"), (0.1, "35"), (0.0, "31"))  # green, yellow, magenta, red


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    from lmgen import load

    return load(tiny_checkpoint)


def spawn(checkpoint, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", LMGEN_CACHE=str(tmp_path), HOME=str(tmp_path),
               TERM="dumb", **extra)
    child = pexpect.spawn(sys.executable, ["-m", "lmgen", "repl", str(checkpoint), "--seed", "1",
                                           "--precision", "float32"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 200), cwd=str(tmp_path))
    child.expect_exact(PROMPT)
    return child


def probs_after(model, tok, ids):
    """The next-token probabilities after [END] + ids: one fresh forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([[tok.end_id] + ids]))[0][0, -1]
    return torch.softmax(logits.double(), -1)


def naive_greedy(model, tok, ids, n):
    """n greedy tokens after [END] + ids, [END] barred (as :min n does)."""
    ids, out = list(ids), []
    for _ in range(n):
        p = probs_after(model, tok, ids)
        p[tok.end_id] = -1.0
        out.append(int(p.argmax()))
        ids.append(out[-1])
    return out


def check_table(text, model, tok, ids, n):
    """The :pick table in ``text`` against the model's top n after ids; -> the listed tokens."""
    rows = ROW.findall(text.replace("\r", ""))
    assert [int(r[0]) for r in rows] == list(range(1, n + 1)), text
    p = probs_after(model, tok, ids)
    top = p.topk(n)
    listed = []
    for (_, label, percent), prob, t in zip(rows, top.values.tolist(), top.indices.tolist()):
        assert label == ("[END]" if t == tok.end_id else repr(tok.decode([t])))
        assert float(percent) == pytest.approx(100 * prob, abs=0.006)
        listed.append(t)
    return listed


def test_pick_save_and_multiline_prompts(tiny_checkpoint, loaded, tmp_path):
    model, tok = loaded
    child = spawn(tiny_checkpoint, tmp_path)
    child.sendline(":help")
    child.expect_exact(PROMPT)
    assert all(c in child.before for c in (":pick N", ":probs on|off", ":save FILE", ":stop STR"))

    child.sendline(":pick 4")  # a new text: the table after [END]
    child.expect_exact("type 1-4 to add that token")
    listed = check_table(child.before, model, tok, [], 4)
    child.expect_exact("pick> ")
    choice = next(i for i, t in enumerate(listed) if t != tok.end_id)
    child.sendline(str(choice + 1))
    child.expect_exact("type 1-4")
    ids = [listed[choice]]
    assert f"text so far: {tok.decode(ids)!r}" in child.before
    check_table(child.before, model, tok, ids, 4)
    child.expect_exact("pick> ")
    child.sendline("he sat")  # own text: added as typed
    child.expect_exact("type 1-4")
    ids += tok.encode("he sat")
    check_table(child.before, model, tok, ids, 4)
    child.sendline("'1")  # a number as text
    child.expect_exact("type 1-4")
    ids += tok.encode("1")
    check_table(child.before, model, tok, ids, 4)
    child.sendline("9")
    child.expect_exact("error: pick a number from 1 to 4")
    child.expect_exact("pick> ")
    child.sendline("")
    child.expect_exact("done picking")
    child.expect_exact(PROMPT)

    child.sendline(":save story.txt")
    child.expect_exact("saved")
    child.expect_exact(PROMPT)
    story = tmp_path / "story.txt"
    assert story.read_text(encoding="utf-8") == tok.decode(ids) + "\n"
    for command in (":greedy", ":max 12", ":min 12"):
        child.sendline(command)
        child.expect_exact(PROMPT)
    child.sendline("")  # continue the picked text
    child.expect_exact("[max 12 tokens]")
    child.expect_exact(PROMPT)
    child.sendline(":save story.txt")  # this session wrote it: no :save! needed
    child.expect_exact("saved")
    child.expect_exact(PROMPT)
    assert story.read_text(encoding="utf-8") == tok.decode(ids + naive_greedy(model, tok, ids, 12)) + "\n"

    (tmp_path / "mine.txt").write_text("my draft", encoding="utf-8")
    child.sendline(":save mine.txt")
    child.expect_exact("mine.txt exists; :save! mine.txt replaces it")
    child.expect_exact(PROMPT)
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "my draft"
    child.sendline(":save! mine.txt")
    child.expect_exact("saved")
    child.expect_exact(PROMPT)
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == story.read_text(encoding="utf-8")
    child.sendline(f":save {tmp_path}")
    child.expect_exact("is a folder")
    child.expect_exact(PROMPT)

    child.sendline("Dear Anna,\\")  # a trailing backslash: the prompt goes on
    child.expect_exact("...... ")
    child.sendline("How are")
    child.expect_exact("[max 12 tokens]")
    child.expect_exact(PROMPT)
    child.sendline(":save! letter.txt")
    child.expect_exact(PROMPT)
    first = tok.encode("Dear Anna,\nHow are")
    assert (tmp_path / "letter.txt").read_text(encoding="utf-8") == \
        tok.decode(first + naive_greedy(model, tok, first, 12)) + "\n"

    child.send("def f(x):\n    return x\nThe cat\n")  # a paste: three lines at once, one prompt
    child.expect_exact("[max 12 tokens]")
    child.expect_exact(PROMPT)
    child.sendline(":save! paste.txt")
    child.expect_exact(PROMPT)
    pasted = tok.encode("def f(x):\n    return x\nThe cat")
    assert (tmp_path / "paste.txt").read_text(encoding="utf-8") == \
        tok.decode(pasted + naive_greedy(model, tok, pasted, 12)) + "\n"
    child.sendline(":quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_probs_colours_each_token_by_its_probability(tiny_checkpoint, loaded, tmp_path):
    model, tok = loaded
    child = spawn(tiny_checkpoint, tmp_path)
    for command in (":greedy", ":max 25", ":min 25", ":probs on"):
        child.sendline(command)
        child.expect_exact(PROMPT)
    assert "probabilities shown" in child.before
    child.sendline("The c")
    child.expect_exact("[max 25 tokens]")
    shown = child.before.replace("\r\n", "\n")
    child.expect_exact(PROMPT)
    painted = re.findall(r"\x1b\[(\d+)m(.*?)\x1b\[0m", shown, re.S)
    ids = tok.encode("The c")
    expected = naive_greedy(model, tok, ids, 25)
    assert "".join(text for _, text in painted) == tok.decode(expected)
    assert len(painted) == 25
    for (code, _), t in zip(painted, expected):
        p = float(probs_after(model, tok, ids)[t])
        ids.append(t)
        if min(abs(p - floor) for floor, _ in BANDS[:-1]) > 1e-4:  # not on a band's edge
            assert code == next(c for floor, c in BANDS if p >= floor), (p, code)
    assert len({code for code, _ in painted}) >= 2  # the text is not all one colour
    child.sendline(":probs off")
    child.expect_exact(PROMPT)
    child.sendline("The c")
    child.expect_exact("[max 25 tokens]")
    assert "\x1b[" not in child.before
    child.expect_exact(PROMPT)
    child.sendline(":quit")
    child.expect(pexpect.EOF)


def test_probs_stays_plain_with_no_color(tiny_checkpoint, tmp_path):
    child = spawn(tiny_checkpoint, tmp_path, NO_COLOR="1")
    child.sendline(":probs on")
    child.expect_exact("the text stays plain")
    child.expect_exact(PROMPT)
    child.sendline("The c")
    child.expect_exact("tokens]")
    assert "\x1b[" not in child.before and "The c" in child.before
    child.expect_exact(PROMPT)
    child.sendline(":probs maybe")
    child.expect_exact(":probs takes on or off, got 'maybe'")
    child.expect_exact(PROMPT)
    child.sendline(":quit")
    child.expect(pexpect.EOF)


def test_stop_and_pick_in_the_session(loaded):
    from lmgen.errors import ConfigError
    from lmgen.sampling import GenerationConfig, Session

    model, tok = loaded
    config = GenerationConfig(do_sample=False, max_new_tokens=40, min_new_tokens=40)
    text = "".join(Session(model, tok, config).generate("The "))[len("The "):]
    stops = (text[10:13], "\n")
    session = Session(model, tok, config)
    assert f"stop at {stops[0]!r}" in session.handle(f':stop "{stops[0]}"')  # quoted: spaces at its ends kept
    session.handle(r":stop \n")
    assert session.settings["stop_strings"] == stops
    cut = "".join(session.generate("The "))[len("The "):]
    end, s = next((e, s) for e in range(1, len(text) + 1) for s in stops if text[:e].endswith(s))
    assert cut == text[:end] and session.context.stop == f"stop:{s}"
    session.handle(":stop off")
    assert session.settings["stop_strings"] == ()
    for bad, message in [(":pick 0", "must be in [1,"), (":pick x", "whole number"), (":stop", "needs a string"),
                         (":save", "needs a file name")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            session.handle(bad)
