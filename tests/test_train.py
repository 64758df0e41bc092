"""The training loop from Python: determinism, resume, schedules, budgets, guards."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from lmgen.checkpoint import load_checkpoint, load_train_state
from lmgen.config import ModelConfig, TrainConfig
from lmgen.errors import ConfigError
from lmgen.schedule import Schedule
from lmgen.train import train

QUIET = dict(progress=False)
SMALL = ModelConfig(embed=8, hidden=16, layers=2, dropout=0.1)


def cfg(corpus, out, **kw):
    base = dict(corpus=str(corpus), batch=4, bptt=16, steps=12, eval_every=5, log_every=2, lr=5e-3,
                warmup=2, out=str(out), seed=3, **QUIET)
    base.update(kw)
    return TrainConfig(**base)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_same_seed_gives_bit_identical_weights(tiny_corpus, tmp_path):
    train(cfg(tiny_corpus, tmp_path / "a"), SMALL, log=lambda m: None)
    train(cfg(tiny_corpus, tmp_path / "b"), SMALL, log=lambda m: None)
    wa, wb = weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    train(cfg(tiny_corpus, tmp_path / "c", seed=4), SMALL, log=lambda m: None)
    wc = weights(tmp_path / "c" / "last")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_corpus, tmp_path):
    # 12 steps straight vs 5 steps, then resume to 12. Dropout is on, so RNG state,
    # data position and carried hidden state must all be restored for equality. (A
    # constant schedule, because cosine follows the step budget, which differs here;
    # test_reliability kills real runs mid-way with the budget unchanged.)
    train(cfg(tiny_corpus, tmp_path / "straight", schedule="constant"), SMALL, log=lambda m: None)
    train(cfg(tiny_corpus, tmp_path / "split", steps=5, schedule="constant"), SMALL, log=lambda m: None)
    result = train(cfg(tiny_corpus, tmp_path / "split", resume=True, steps=12, schedule="constant"), SMALL,
                   log=lambda m: None)
    assert result.steps == 12
    a, b = weights(tmp_path / "straight" / "last"), weights(tmp_path / "split" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # metrics.jsonl holds each step once, in order.
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(set(steps))


def test_checkpoint_holds_what_resume_needs(tiny_checkpoint):
    state = load_train_state(tiny_checkpoint / "last")
    assert state["step"] == 80
    assert set(state["hidden"]) == {"h", "c"}
    assert state["hidden"]["h"].shape == (1, 4, 32)
    assert "state" in state["optimizer"] and "torch" in state["rng"]
    config = json.loads((tiny_checkpoint / "last" / "config.json").read_text())
    assert config["format"] == "lmgen-checkpoint/1"
    assert config["model"]["vocab_size"] == config["tokenizer"]["vocab_size"]
    assert config["corpus"]["fingerprint"]


def test_save_load_gives_identical_logits(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint / "last")
    again = load_checkpoint(tiny_checkpoint / "last")
    x = torch.tensor([ckpt.tokenizer.encode("The cat sat")])
    torch.testing.assert_close(ckpt.model(x)[0], again.model(x)[0], rtol=0, atol=0)
    # And the loaded weights are those the training run held at its last step: re-save and compare bytes.
    w = weights(tiny_checkpoint / "last")
    for name, tensor in ckpt.model.state_dict().items():
        if name in w:
            assert torch.equal(w[name], tensor)


def test_training_lowers_the_loss(tiny_checkpoint):
    rows = [json.loads(line) for line in (tiny_checkpoint / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert train_rows[0]["train_loss"] > train_rows[-1]["train_loss"] + 0.5
    assert len(evals) == 2 and all(math.isfinite(r["val_loss"]) for r in evals)
    assert all(r["tok_per_s"] > 0 for r in train_rows)


def test_epoch_budget_and_early_stopping(tiny_corpus, tmp_path):
    result = train(cfg(tiny_corpus, tmp_path / "e", steps=0, epochs=1), SMALL, log=lambda m: None)
    assert result.stopped_by == "epochs"
    # lr so large that validation cannot keep improving: patience 1 stops early.
    result = train(cfg(tiny_corpus, tmp_path / "p", steps=400, eval_every=2, patience=1, lr=0.5, clip=0,
                       schedule="constant"), SMALL, log=lambda m: None)
    assert result.stopped_by == "early-stopping" and result.steps < 400


def test_refuses_to_overwrite_a_run_and_resume_needs_one(tiny_checkpoint, tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(cfg(tiny_corpus, tiny_checkpoint), SMALL, log=lambda m: None)
    with pytest.raises(ConfigError, match="holds no run to continue"):
        train(cfg(tiny_corpus, tmp_path / "none", resume=True), SMALL, log=lambda m: None)


def test_a_run_folder_in_use_is_refused_until_its_process_dies(tiny_corpus, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "busy"
    # a real `lmgen train` holding the folder: a long budget, killed below
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    child = subprocess.Popen([sys.executable, "-m", "lmgen", "train", "--corpus", str(tiny_corpus), "--hidden", "8",
                              "--embed", "4", "--batch", "2", "--bptt", "8", "--steps", "1000000", "--no-progress",
                              "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():  # it holds the lock from before its first step
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(ConfigError, match=rf"in use by another `lmgen train` \(pid {child.pid}\)"):
            train(cfg(tiny_corpus, out, steps=2), SMALL, overwrite=True, log=lambda m: None)
        assert (out / "metrics.jsonl").exists()  # the refused --overwrite deleted nothing
    finally:
        child.kill()
        child.wait()
    train(cfg(tiny_corpus, out, steps=2), SMALL, overwrite=True, log=lambda m: None)  # the kill freed it


def test_warmup_cosine_and_plateau_schedules():
    s = Schedule(TrainConfig(warmup=10, min_lr=0.1, schedule="cosine"))
    assert s.scale(0, 0.0) == pytest.approx(0.1)
    assert s.scale(9, 0.0) == pytest.approx(1.0)
    assert s.scale(100, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s.scale(100, 1.0) == pytest.approx(0.1)
    p = Schedule(TrainConfig(warmup=0, schedule="plateau", plateau_factor=0.5, plateau_patience=1))
    for loss in (3.0, 2.0, 2.5, 2.4):  # two evaluations without improvement > patience 1
        p.observe(loss)
    assert p.scale(5, 0.0) == pytest.approx(0.5)
    restored = Schedule(p.cfg)
    restored.load_state_dict(p.state_dict())
    assert restored.scale(5, 0.0) == p.scale(5, 0.0)


def test_step_schedule_is_zarembas_per_epoch_halving():
    # Zaremba et al.'s small recipe: lr 1 for 4 epochs, then halved at the start of each
    # later one (their code: 0.5 ** max(i + 1 - 4, 0) for 0-based epoch i).
    s = Schedule(TrainConfig(warmup=0, schedule="step", decay_after=4, decay_factor=0.5))
    got = [s.scale(1000, 0.5, epoch) for epoch in range(13)]
    assert got == [0.5 ** max(i + 1 - 4, 0) for i in range(13)]
    assert got[:4] == [1.0] * 4 and got[4] == 0.5 and got[12] == 0.5 ** 9


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_train_and_reload(tiny_corpus, tmp_path, cell):
    model_cfg = ModelConfig(cell=cell, embed=16, hidden=16, layers=1, tie=True)
    train(cfg(tiny_corpus, tmp_path / cell, steps=4), model_cfg, log=lambda m: None)
    ckpt = load_checkpoint(tmp_path / cell)
    assert ckpt.model.config.cell == cell and ckpt.model.config.tie
    assert ckpt.model.decoder.weight.data_ptr() == ckpt.model.embedding.weight.data_ptr()


def test_word_and_spm_tokenizers_train(tiny_corpus, tmp_path):
    for kind, extra in (("word", {}), ("spm", {"spm_vocab": 300})):
        train(cfg(tiny_corpus, tmp_path / kind, steps=3, tokenizer=kind, bptt=8, **extra), SMALL, log=lambda m: None)
        ckpt = load_checkpoint(tmp_path / kind)
        assert ckpt.tokenizer.kind == kind
        text = "The cat sat on the mat."
        assert ckpt.tokenizer.decode(ckpt.tokenizer.encode(text)) == text
