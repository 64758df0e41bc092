"""The command line, run as a user runs it: through subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmgen.cli import _MODEL_FIELDS, _TRAIN_FIELDS
from lmgen.config import ModelConfig, TrainConfig, flag


def lmgen(*args, check=True, timeout=300, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "lmgen", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmgen {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def test_train_help_documents_every_flag_with_its_default():
    out = lmgen("train", "--help").stdout
    for f in _MODEL_FIELDS + _TRAIN_FIELDS:
        assert flag(f.name) in out, f.name
    for value in (ModelConfig.hidden, TrainConfig.bptt, TrainConfig.lr):
        assert f"(default: {value!r})" in out


def test_a_typo_in_a_flag_is_a_usage_error_with_a_suggestion():
    proc = lmgen("train", "--hiden", "64", check=False)
    assert proc.returncode == 2
    assert "did you mean --hidden?" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--epochs", "inf"], "--epochs must be a finite number, got inf"),  # found by tests/test_cli_fuzz.py
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--steps", "-3"], "--steps must be a whole number >= 0, got -3"),
    (["--time", "soon"], "--time must be a positive duration"),
    (["--corpus", "tinyshakespear"], "tinyshakespeare"),
    (["--tie", "--embed", "32", "--hidden", "64"], "--tie needs --embed equal to --hidden"),
])
def test_bad_values_give_one_clear_line(args, message, tmp_path):
    proc = lmgen("train", *args, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_on_the_builtin_default_then_sample(tmp_path):
    out = tmp_path / "default"
    proc = lmgen("train", "--steps", "6", "--batch", "4", "--bptt", "16", "--hidden", "32", "--embed", "16",
                 "--eval-every", "3", "--eval-tokens", "2000", "--out", out, "--no-progress")
    assert "corpus python-stdlib" in proc.stderr
    assert "trained 6 steps" in proc.stderr
    assert (out / "best" / "model.safetensors").exists() and (out / "last" / "train_state.pt").exists()
    sample = lmgen("sample", out, "--prompt", "def ", "--max-new-tokens", "40", "--seed", "1")
    assert sample.stdout.startswith("def ") and len(sample.stdout) > 5
    again = lmgen("sample", out, "--prompt", "def ", "--max-new-tokens", "40", "--seed", "1")
    assert again.stdout == sample.stdout


def test_train_on_a_shared_corpus_with_a_toml_config_and_resume(mirror, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text('corpus = "tinyshakespeare"\n[model]\nhidden = 32\nembed = 16\n'
                      '[train]\nbatch = 8\nbptt = 32\nsteps = 8\neval-every = 4\neval_tokens = 3000\n')
    out = tmp_path / "shakespeare"
    # The command line wins over the file: --steps 4.
    proc = lmgen("train", "--config", config, "--steps", "4", "--out", out, "--no-progress")
    assert "corpus tinyshakespeare: 1,003,855 training tokens" in proc.stderr
    assert "model 1x32 lstm" in proc.stderr and "trained 4 steps" in proc.stderr
    proc = lmgen("train", "--resume", "--out", out, "--steps", "8", "--no-progress")
    assert "resuming at step 4" in proc.stderr and "trained 8 steps" in proc.stderr
    proc = lmgen("train", "--resume", "--out", out, "--hidden", "64", check=False)
    assert proc.returncode == 1 and "--hidden cannot change when resuming" in proc.stderr
    config.write_text("hiden = 3\n")
    proc = lmgen("train", "--config", config, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 1 and "unknown setting(s): --hiden" in proc.stderr


def test_corpus_list_and_info(mirror):
    listing = lmgen("corpus", "list").stdout
    for name in ("python-stdlib", "tinyshakespeare", "ptb", "ptb-char", "wikitext-2", "enwik8"):
        assert name in listing
    info = lmgen("corpus", "info", "ptb").stdout
    assert "42,068" in info or "42068" in info


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    proc = lmgen("sample", tmp_path, check=False)
    assert proc.returncode == 1
    assert "is not an lmgen checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path):
    # Read as `lmgen train --config` reads it: a typo in a recipe (an unknown key, a bad
    # value) fails here, not an hour into a benchmark.
    from lmgen.config import load_recipe

    train_cfg, model_cfg = load_recipe(str(path))
    assert train_cfg.steps or train_cfg.epochs or train_cfg.time, f"{path.name} sets no budget"
    assert min(model_cfg.sizes) >= 1 and len(model_cfg.sizes) == model_cfg.layers


def test_a_mistyped_command_gets_a_did_you_mean(capsys):
    from lmgen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["trian", "--steps", "1"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian' (did you mean train?)" in capsys.readouterr().err
