"""Careless or hostile input on the command line: bounded flags, honest resume, no tracebacks.

Each case runs the real CLI (tests/refusal.py): a non-zero exit, one ``error:`` line that
names the problem, no traceback, within 10 s and under 500 MB of peak RSS.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from refusal import measured, refused

from lmgen.config import TrainConfig
from lmgen.errors import ConfigError
from lmgen.runs import RESUME_FIXED, RESUME_MAY_CHANGE
from lmgen.sampling import Session


@pytest.mark.parametrize("args, words", [
    (["--num-samples", "1000000"], "at most"),
    (["--beam", "100000"], "--beam must be a whole number in [1, 1024]"),
    (["--seed", "100000000000000000000000"], "--seed: must be in [0, 2^63)"),
    (["--seed", "1e23"], "--seed: must be a whole number"),
    (["--beam", "3", "--length-penalty", "500"], "--length-penalty must be a number in [-10, 10]"),
    (["--beam", "3", "--length-penalty", "-2000"], "--length-penalty must be a number in [-10, 10]"),
])
def test_sample_count_flags_are_bounded(tiny_checkpoint, args, words):
    assert words in refused("sample", tiny_checkpoint, "--max-new-tokens", "5", *args)


def test_an_absurd_ngram_order_is_refused(tiny_checkpoint):
    assert "order 1 to 10" in refused("eval", tiny_checkpoint, "--baseline", "ngram:1000000000")


@pytest.mark.parametrize("args, words", [
    (["--threads", "1000000"], "--threads must be auto or a whole number <= 1024"),
    (["--layers", "10000000"], "this machine has"),
    (["--out", "/"], "--out must be a folder of its own"),
    (["--out", ""], "--out must name a run folder"),
    (["--out", "~"], "--out must be a folder of its own"),
    (["--config", "."], "--config .: cannot read it"),
])
def test_train_flags_are_bounded(tiny_corpus, tmp_path, args, words):
    line = refused("train", "--corpus", tiny_corpus, "--steps", "2", "--no-progress",
                   *([] if "--out" in args else ["--out", tmp_path / "run"]), *args, cwd=tmp_path)
    assert words in line
    assert not (Path("/") / "last").exists()


def test_a_toml_string_is_not_a_boolean(tiny_corpus, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('progress = "no"\n')
    assert "--progress must be true or false, got 'no'" in refused(
        "train", "--config", recipe, "--corpus", tiny_corpus, "--out", tmp_path / "run")


def test_an_unusable_cache_folder_is_one_line(tiny_corpus, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = refused("train", "--corpus", tiny_corpus, "--steps", "2", "--out", tmp_path / "run",
                   env={"LMGEN_CACHE": str(tmp_path / "afile" / "cache")})
    assert "Not a directory" in line and "LMGEN_CACHE" in line


@pytest.mark.parametrize("command, suffix", [("viz", "page.html"), ("plot", "curves.png")])
def test_an_output_that_is_a_folder_is_refused(tiny_checkpoint, tiny_corpus, tmp_path, command, suffix):
    extra = ["--text", tiny_corpus, "--find", "http"] if command == "viz" else []
    line = refused(command, tiny_checkpoint, *extra, "--out", tmp_path)
    assert f"is a folder; give a file name in it, e.g. {tmp_path / suffix}" in line
    assert not Path(str(tmp_path) + ".png").exists()


def test_viz_creates_a_missing_output_folder(tiny_checkpoint, tiny_corpus, tmp_path):
    from lmgen.cli import main

    out = tmp_path / "new" / "page.html"
    assert main(["viz", str(tiny_checkpoint), "--text", str(tiny_corpus), "--find", "http", "--out", str(out)]) == 0
    assert out.exists()


@pytest.mark.parametrize("command, redirect, stream", [
    (["repl"], "<&-", "input"), (["sample", "--max-new-tokens", "5"], ">&-", "output")])
def test_a_closed_standard_stream_is_one_line(tiny_checkpoint, command, redirect, stream):
    import subprocess
    import sys

    done = subprocess.run(f"{sys.executable} -m lmgen {command[0]} {tiny_checkpoint} {' '.join(command[1:])} "
                          f"{redirect}", shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"standard {stream} is closed" in done.stderr.strip().splitlines()[-1]


def test_the_repl_refuses_an_absurd_seed_and_goes_on(tiny_checkpoint):
    from lmgen import load

    model, tok = load(tiny_checkpoint)
    session = Session(model, tok, seed=3)
    with pytest.raises(ConfigError, match=r":seed must be a whole number in \[0, 2\^63\)"):
        session.handle(":seed 100000000000000000000000")
    assert session.seed == 3
    assert session.handle(":seed 4") == "seed 4"


# -- resume ------------------------------------------------------------------------------


def test_every_training_setting_is_classified_for_resume():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert RESUME_MAY_CHANGE | RESUME_FIXED == names  # a new field must be put on one side
    assert not RESUME_MAY_CHANGE & RESUME_FIXED


@pytest.fixture
def run(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


@pytest.mark.parametrize("args, flag", [
    (["--batch", "8"], "--batch"), (["--optimizer", "sgd"], "--optimizer"), (["--bptt", "16"], "--bptt"),
    (["--tokenizer", "word"], "--tokenizer"), (["--average", "polyak"], "--average"), (["--hidden", "64"], "--hidden"),
])
def test_resume_refuses_what_it_cannot_honour(run, args, flag):
    line = refused("train", "--resume", "--out", run, "--steps", "100", "--no-progress", *args)
    assert f"{flag} cannot change when resuming" in line


def test_resume_accepts_a_new_budget_and_learning_rate(run, tiny_corpus):
    from lmgen.cli import main

    assert main(["train", "--resume", "--out", str(run), "--steps", "90", "--lr", "0.001", "--no-progress"]) == 0
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["train"]["steps"] == 90 and config["train"]["lr"] == 0.001
    assert config["train"]["batch"] == 4  # the run's own, kept


def test_a_torn_metrics_line_is_dropped_with_a_warning(run, capsys):
    from lmgen.cli import main

    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 9')  # a kill mid-write
    assert main(["train", "--resume", "--out", str(run), "--steps", "85", "--no-progress"]) == 0
    assert "dropped 1 unreadable line" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 85


def test_resume_before_the_first_save_says_what_to_do(tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "metrics.jsonl").write_text('{"kind": "train", "step": 10}\n')
    line = refused("train", "--resume", "--out", cut)
    assert "has no checkpoint yet" in line and "without --resume" in line
    assert "does not exist" in refused("train", "--resume", "--out", tmp_path / "nowhere")


def test_seeds_are_bounded_in_the_python_api_too():
    with pytest.raises(ConfigError, match="--seed"):
        TrainConfig(seed=2**64)
    assert torch.Generator().manual_seed(TrainConfig(seed=2**63 - 1).seed).initial_seed() == 2**63 - 1


def test_eval_of_a_large_file_with_an_unknown_symbol_stays_small(tiny_checkpoint, tmp_path):
    # 40 MB of known text and one symbol the vocabulary lacks, at the very end: naming it
    # must not load the whole file (it took 2.1 GB for 100 MB before).
    big = tmp_path / "big.txt"
    line = ("The cat sat on the mat. " * 40 + "\n").encode()
    with open(big, "wb") as f:
        for _ in range(40_000_000 // len(line)):
            f.write(line)
        f.write("the \u20ac\n".encode())
    code, lines, seconds, rss_mb, stdout = measured("eval", tiny_checkpoint, "--split", big, "--max-tokens", "2000",
                                                    "--json")
    assert code == 0, lines
    assert json.loads(stdout)["unknown_symbols"] == ["\u20ac"]  # found, at the end of the file
    assert rss_mb < 500, f"peak RSS {rss_mb:.0f} MB"


def test_a_train_state_from_another_run_is_refused(run, tiny_corpus, tmp_path):
    from lmgen.config import ModelConfig
    from lmgen.train import train

    other = tmp_path / "other"
    train(TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=32, steps=4, eval_every=4, progress=False, out=str(other)),
          ModelConfig(embed=16, hidden=24, layers=1), log=lambda msg: None)
    shutil.copy(other / "last" / "train_state.pt", run / "last" / "train_state.pt")
    line = refused("train", "--resume", "--out", run, "--steps", "100", "--no-progress")
    assert "does not belong to this run" in line and "train_state.pt" in line


def test_a_tampered_train_state_is_refused(run):
    state = torch.load(run / "last" / "train_state.pt", weights_only=True)
    state["step"] = "eighty"
    torch.save(state, run / "last" / "train_state.pt")
    assert "'step' is 'eighty'" in refused("train", "--resume", "--out", run, "--steps", "100", "--no-progress")
