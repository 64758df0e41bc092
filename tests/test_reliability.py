"""Faults survived, nothing lost: kills, signals, corrupt checkpoints, bad input."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmgen.checkpoint import load_checkpoint, load_train_state
from lmgen.cli import main
from lmgen.config import ModelConfig, TrainConfig
from lmgen.errors import CheckpointError, LmgenError
from lmgen.train import train

RUN = ["--batch", "4", "--bptt", "16", "--hidden", "24", "--embed", "8", "--layers", "2", "--dropout", "0.1",
       "--eval-every", "3", "--eval-tokens", "200", "--log-every", "1", "--no-progress", "--seed", "5"]


def spawn(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen([sys.executable, "-m", "lmgen", "train", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for(predicate, timeout=120.0, every=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tiny_corpus, tmp_path):
    steps = 45
    ref = tmp_path / "ref"
    proc = spawn("--corpus", tiny_corpus, "--steps", steps, "--out", ref, *RUN)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    proc = spawn("--corpus", tiny_corpus, "--steps", steps, "--out", out, *RUN)
    while kills < 3:
        assert wait_for(lambda p=proc: (out / "last").exists() or p.poll() is not None)
        time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = spawn("--corpus", tiny_corpus, "--steps", steps, "--out", out, "--resume", *RUN)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert kills >= 2, "the run finished before it could be killed twice; make it longer"
    assert same(weights(ref / "last"), weights(out / "last"))
    state = load_train_state(out / "last")
    assert state["step"] == steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, steps + 1))


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_last_good_one(tmp_path, tiny_corpus):
    # A bigger model so that writing a checkpoint takes long enough to be caught in the act.
    out = tmp_path / "run"
    args = ["--corpus", tiny_corpus, "--steps", "400", "--out", out, "--batch", "4", "--bptt", "8",
            "--hidden", "384", "--eval-every", "2", "--eval-tokens", "50", "--no-progress"]
    proc = spawn(*args)
    caught = wait_for(lambda: (out / "last").exists() and any(p.name.startswith(".last.tmp-")
                                                               for p in out.iterdir()), every=0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, "never saw a checkpoint being written"
    ckpt = load_checkpoint(out)  # the last good one (or the .old copy) still loads
    assert ckpt.model.config.hidden == 384
    proc = spawn(*args[:-1], "--resume", "--steps", "6")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_a_resumable_checkpoint(tmp_path, tiny_corpus, sig):
    out = tmp_path / "run"
    proc = spawn("--corpus", tiny_corpus, "--steps", "100000", "--out", out, *RUN[:-2], "--eval-every", "100000")
    assert wait_for(lambda: (out / "metrics.jsonl").exists())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: lmgen train --resume --out" in err
    step = load_train_state(out / "last")["step"]
    assert 0 < step < 100000
    proc = spawn("--corpus", tiny_corpus, "--out", out, "--resume", "--steps", step + 2, *RUN)
    assert proc.wait(timeout=300) == 0
    assert load_train_state(out / "last")["step"] == step + 2


def test_non_finite_losses_are_skipped_then_stop_and_never_touch_best(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    cfg = dict(corpus=str(tiny_corpus), batch=4, bptt=16, eval_every=2, out=str(out), progress=False, warmup=0)
    train(TrainConfig(steps=2, **cfg), ModelConfig(hidden=16, embed=8), log=lambda m: None)
    best_before = weights(out / "best")
    # Poison the last checkpoint (as a diverged run would): every loss is now NaN.
    poisoned = weights(out / "last")
    poisoned["decoder.bias"][:] = float("nan")
    save_file(poisoned, str(out / "last" / "model.safetensors"))
    messages = []
    with pytest.raises(LmgenError, match="non-finite losses in a row.*lower --lr"):
        train(TrainConfig(steps=50, resume=True, max_nonfinite=3, **cfg),
              ModelConfig(hidden=16, embed=8), log=messages.append)
    assert any("update skipped" in m for m in messages)
    assert same(best_before, weights(out / "best"))


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["LMGEN_EVIL_MARKER"]),))


def test_a_checkpoint_that_would_run_code_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    bad = tmp_path / "evil"
    shutil.copytree(tiny_checkpoint / "last", bad)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LMGEN_EVIL_MARKER", str(marker))
    state = load_train_state(bad)
    state["payload"] = _Evil()
    torch.save(state, bad / "train_state.pt")
    with pytest.raises(CheckpointError, match="refusing to load .*could run code"):
        load_train_state(bad)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors is truncated"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json"),
    (lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace("lmgen-checkpoint/1", "lmgen-checkpoint/99")),
     "format 'lmgen-checkpoint/99'"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json is unreadable"),
    (lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"vocab_size": ', '"vocab_size": 1')), "different runs"),
    (lambda f: (f / "train_state.pt").write_bytes(b"\x80\x02garbage"), "train_state.pt"),
])
def test_damaged_checkpoints_name_the_file(tiny_checkpoint, tmp_path, damage, message):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint / "last", bad)
    damage(bad)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_checkpoint(bad)
        load_train_state(bad)


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"   \n\t\n  ", "whitespace"),
    (b"good text \xff\xfe more text " * 20, "byte"),
    (b"ab", "bigger corpus"),
])
def test_bad_corpora_give_a_clear_error(tmp_path, capsys, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    code, err = run_cli(capsys, "train", "--corpus", corpus, "--out", tmp_path / "r", "--steps", "1",
                        "--no-progress")
    assert code == 1 and message in err.lower(), err
    assert "Traceback" not in err


def test_a_corpus_smaller_than_one_batch_says_how_to_shrink_it(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("Hello world. " * 30)
    code, err = run_cli(capsys, "train", "--corpus", corpus, "--out", tmp_path / "r", "--batch", "256")
    assert code == 1 and "too few for --batch 256" in err and "use --batch" in err, err


def test_non_utf8_can_be_replaced(tmp_path, capsys):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("Caf\xe9 au lait, cr\xe8me br\xfbl\xe9e. ".encode("latin-1") * 200)
    code, err = run_cli(capsys, "train", "--corpus", corpus, "--out", tmp_path / "r", "--steps", "2",
                        "--batch", "2", "--hidden", "16", "--encoding-errors", "replace", "--no-progress")
    assert code == 0, err


def test_unwritable_out_folder_fails_before_training(tmp_path, tiny_corpus, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = run_cli(capsys, "train", "--corpus", tiny_corpus, "--out", blocker / "run", "--steps", "1")
    assert code == 1 and "cannot write to the run folder" in err


def test_folder_without_text_files(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "blob.bin").write_bytes(bytes(range(256)) * 10)
    code, err = run_cli(capsys, "train", "--corpus", tmp_path / "data", "--out", tmp_path / "r")
    assert code == 1 and "no text files" in err.lower(), err


# Every option of issue 14 that changes what a step does or what a checkpoint holds.
AWD = ["--ar", "2", "--tar", "1", "--bptt-jitter", "4", "--weight-drop", "0.3", "--dropout-hidden", "0.2",
       "--dropout-input", "0.1", "--dropout-output", "0.2", "--dropout-embed", "0.1"]


def killed_and_resumed(out: Path, args: list, rng: random.Random, kills: int = 3) -> int:
    """``lmgen train ARGS --out OUT``, SIGKILLed at random moments after its first save and resumed
    each time, then left to finish; returns how many kills landed."""
    landed = 0
    for attempt in range(kills + 1):
        proc = spawn(*args, "--out", out, *(["--resume"] if attempt else []))
        if attempt == kills or not wait_for(lambda p=proc: (out / "last").exists() or p.poll() is not None):
            break
        time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:  # still running: kill it mid-step, mid-evaluation or mid-save
            proc.kill()
            landed += proc.wait() == -signal.SIGKILL
        else:
            break
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return landed


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [
    # ... with AWD-LSTM's shape too: layers of different sizes and an adaptive softmax
    ["--average", "ema:0.9", "--hidden", "24,16", "--adaptive-softmax", "8,20"],
    # a rate so large that validation soon gets worse: NT-ASGD switches mid-run
    ["--optimizer", "ntasgd", "--nonmono", "1", "--lr", "40", "--clip", "0.25"],
], ids=["ema", "ntasgd"])
def test_sigkill_then_resume_is_bit_identical_with_every_awd_option(tiny_corpus, tmp_path, averaging):
    steps = 45
    args = ["--corpus", tiny_corpus, "--steps", steps, *RUN, *AWD, *averaging]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    proc = spawn(*args, "--out", ref)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert killed_and_resumed(out, args, random.Random(1)) >= 2, "the run finished too soon; make it longer"
    # The averaged weights (model.safetensors), the raw ones and the average's state all agree.
    for name in ("last", "best"):
        assert same(weights(ref / name), weights(out / name))
    a, b = load_train_state(ref / "last"), load_train_state(out / "last")
    assert same(a["average"]["weights"], b["average"]["weights"])
    assert same(a["average"]["average"], b["average"]["average"])
    assert (a["average"]["count"], a["average"]["trigger"]) == (b["average"]["count"], b["average"]["trigger"])
    assert (a["position"], a["epoch"], a["step"]) == (b["position"], b["epoch"], steps)
    assert torch.equal(a["lengths"]["generator"], b["lengths"]["generator"])
    if "ntasgd" in averaging:
        assert 0 < a["average"]["trigger"]["fired_at"] < steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("val_loss") for r in rows] == [r.get("val_loss") for r in ref_rows]
