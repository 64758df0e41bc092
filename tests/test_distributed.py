"""Data-parallel training under torchrun, on CPU with gloo (issue 8).

The oracle is one process: W ranks of B/W streams must take the same steps as one
process of B streams (same seed, no dropout), so their weights agree to float rounding;
a run saved under one world size resumes under another exactly; a rank that dies or
hangs ends the whole job with an error, within a bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmgen.config import ModelConfig, TrainConfig
from lmgen.distributed import World
from lmgen.errors import ConfigError
from lmgen.train import train

MODEL = dict(embed=8, hidden=16, layers=2)  # 2 layers: the carried state is [L=2, B, H]
# Constant LR, no warm-up: a run stopped at step 8 and resumed to 16 follows the same
# schedule as a run of 16; large enough LR that the weights move far from their init.
# SGD, because AdamW divides each gradient by its own running size: a gradient that is
# float noise around zero (its value depends on the order of additions, which differs
# between one process and an all-reduce) becomes a full-size step. With AdamW at
# --lr 0.01 the two runs still agree to ~5e-6; with SGD to ~6e-8.
TRAIN = dict(batch=4, bptt=16, eval_every=4, log_every=2, optimizer="sgd", lr=0.5, momentum=0.9, warmup=0,
             schedule="constant", progress=False, seed=3, device="cpu")
FLAGS = ["--embed", "8", "--hidden", "16", "--layers", "2", "--batch", "4", "--bptt", "16", "--eval-every", "4",
         "--log-every", "2", "--optimizer", "sgd", "--lr", "0.5", "--momentum", "0.9", "--warmup", "0",
         "--schedule", "constant", "--no-progress", "--seed", "3", "--device", "cpu"]


def torchrun(nproc: int, *args: object, env: dict[str, str] | None = None, timeout: float = 90):
    """``torchrun --standalone --nproc_per_node N -m lmgen train ARGS`` (a free port is picked for us)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "lmgen", "train", *map(str, args)]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **(env or {}))
    start = time.monotonic()
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def one_process(corpus: Path, out: Path, steps: int, resume: bool = False) -> None:
    cfg = TrainConfig(corpus=str(corpus), steps=steps, out=str(out), resume=resume, threads=1, **TRAIN)
    train(cfg, ModelConfig(**MODEL), overwrite=not resume, log=lambda msg: None)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- without a process group ---------------------------------------------------------------


def test_shares_tile_the_batch_and_states_split_and_join():
    B, W = 12, 3
    shares = [World(rank=r, size=W).share(B) for r in range(W)]
    assert [(s.start, s.stop) for s in shares] == [(0, 4), (4, 8), (8, 12)]
    h, c = torch.randn(2, B, 5), torch.randn(2, B, 5)  # LSTM state [L, B, H]
    parts = [World(rank=r, size=W).split_state((h, c), B) for r in range(W)]
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), h)
    assert torch.equal(torch.cat([p[1] for p in parts], dim=1), c)
    with pytest.raises(ConfigError, match=r"--batch 10 .* divisible by the 3 processes.*--batch 12"):
        World(rank=0, size=3).share(10)
    with pytest.raises(ConfigError, match="covers 12 streams but --batch is 6"):
        World(rank=0, size=2).split_state(h, 6)


# -- under torchrun ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~12 kB of real, non-repeating text (the fixture ``tiny_corpus`` repeats one paragraph,
    so its streams could coincide and hide a rank that trains on the wrong ones)."""
    import json.decoder

    path = tmp_path_factory.mktemp("ddp-corpus") / "decoder.py.txt"
    path.write_text(Path(json.decoder.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process for 8 and 16 steps; 2 ranks x 2 streams for 8 steps (same seed)."""
    root = tmp_path_factory.mktemp("ddp")
    one_process(corpus, root / "one-8", 8)
    one_process(corpus, root / "one-16", 16)
    proc, _ = torchrun(2, "--corpus", corpus, "--steps", 8, "--out", root / "two-8", *FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"one-8": root / "one-8", "one-16": root / "one-16", "two-8": root / "two-8", "root": root,
            "stderr": proc.stderr}


@pytest.mark.slow
def test_two_ranks_take_the_steps_of_one_process(runs):
    one, two = runs["one-8"], runs["two-8"]
    assert max_difference(weights(one), weights(two)) < 1e-5
    # The weights moved: the agreement is not that of two untouched initialisations.
    assert max_difference(weights(one), weights(runs["one-16"])) > 1e-3
    # The carried state saved is the global [L, B, H] one, equal to one process's.
    s1 = torch.load(one / "last" / "train_state.pt", weights_only=True)
    s2 = torch.load(two / "last" / "train_state.pt", weights_only=True)
    assert s2["hidden"]["h"].shape == (2, 4, 16) and len(s2["rng_ranks"]) == 2
    for k in ("h", "c"):
        assert torch.allclose(s1["hidden"][k], s2["hidden"][k], atol=1e-5)
    assert (s1["step"], s1["window"], s1["tokens"]) == (s2["step"], s2["window"], s2["tokens"])
    # Only rank 0 logged: the same rows as one process (none twice), with the losses reduced
    # over ranks (global mean of training loss, validation split scored across ranks).
    r1, r2 = rows(one), rows(two)
    assert [(r["kind"], r["step"], r["tokens"]) for r in r1] == [(r["kind"], r["step"], r["tokens"]) for r in r2]
    for a, b in zip(r1, r2):
        key = "val_loss" if a["kind"] == "eval" else "train_loss"
        assert abs(a[key] - b[key]) < 1e-5
    # rank 0's run-folder lock, checkpoints and metrics; nothing from rank 1
    assert sorted(p.name for p in two.iterdir()) == [".lock", "best", "last", "metrics.jsonl"]
    assert (two / ".lock").read_text().strip().isdigit()
    assert runs["stderr"].count("trained 8 steps") == 1  # one summary, from rank 0


@pytest.mark.slow
def test_resume_with_another_number_of_ranks(runs, corpus):
    root, reference = runs["root"], weights(runs["one-16"])
    # Saved by 2 ranks, continued by 1 process.
    shutil.copytree(runs["two-8"], root / "two-then-one")
    one_process(corpus, root / "two-then-one", 16, resume=True)
    assert max_difference(weights(root / "two-then-one"), reference) < 1e-5
    # Saved by 1 process, continued by 2 ranks (the CLI's --resume takes the saved settings).
    shutil.copytree(runs["one-8"], root / "one-then-two")
    proc, _ = torchrun(2, "--resume", "--steps", 16, "--out", root / "one-then-two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_difference(weights(root / "one-then-two"), reference) < 1e-5
    assert [r["step"] for r in rows(root / "one-then-two")] == [r["step"] for r in rows(runs["one-16"])]
    # B = 4 streams cannot be shared by 3 ranks: a clear error, nothing written.
    shutil.copytree(runs["two-8"], root / "three")
    before = (root / "three" / "last" / "model.safetensors").read_bytes()
    proc, _ = torchrun(3, "--resume", "--steps", 16, "--out", root / "three")
    assert proc.returncode != 0
    assert "lmgen: error: --batch 4 is the global number of streams and must be divisible by the 3" in proc.stderr
    assert (root / "three" / "last" / "model.safetensors").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_failing_rank_ends_the_job(fault, tiny_corpus, tmp_path):
    # Rank 1 exits (os._exit) or stops answering at step 3; the job must end non-zero, fast,
    # naming the failure, and not hang (the subprocess timeout would fail the test).
    proc, seconds = torchrun(2, "--corpus", tiny_corpus, "--steps", 50, "--out", tmp_path / "run", *FLAGS,
                             env={"LMGEN_TEST_FAULT": f"{fault}:1:3", "LMGEN_DIST_TIMEOUT": "5"}, timeout=120)
    assert proc.returncode != 0
    assert "ChildFailedError" in proc.stderr and "Root Cause" in proc.stderr
    if fault == "die":
        assert "exitcode  : 17" in proc.stderr  # torchrun names the rank that died and how
    else:
        assert "lmgen: error: rank 0 of 2: lost contact with the other ranks" in proc.stderr
        assert "Timed out" in proc.stderr and "LMGEN_DIST_TIMEOUT=5" in proc.stderr
    assert seconds < 90
    assert not (tmp_path / "run" / "last").exists()  # died before the first save at step 4


@pytest.mark.slow
def test_two_ranks_draw_the_same_window_lengths_and_average_alike(corpus, tmp_path):
    # Issue 14's step options under torchrun: every rank must draw the same window length
    # (or the ranks' windows, and so their hidden states, would drift apart), and the
    # average, kept on every rank, must be one process's.
    options = dict(bptt_jitter=4.0, ar=1.0, tar=1.0, average="ema:0.9")
    cfg = TrainConfig(corpus=str(corpus), steps=8, out=str(tmp_path / "one"), threads=1, **TRAIN, **options)
    train(cfg, ModelConfig(**MODEL), log=lambda msg: None)
    proc, _ = torchrun(2, "--corpus", corpus, "--steps", 8, "--out", tmp_path / "two", *FLAGS, "--bptt-jitter", "4",
                       "--ar", "1", "--tar", "1", "--average", "ema:0.9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert max_difference(weights(one), weights(two)) < 1e-5
    s1 = torch.load(one / "last" / "train_state.pt", weights_only=True)
    s2 = torch.load(two / "last" / "train_state.pt", weights_only=True)
    assert max_difference(s1["average"]["weights"], s2["average"]["weights"]) < 1e-5
    assert (s1["position"], s1["tokens"]) == (s2["position"], s2["tokens"]) and s1["position"] % 16 != 0
    assert torch.equal(s1["lengths"]["generator"], s2["lengths"]["generator"])
    for a, b in zip(rows(one), rows(two)):
        key = "val_loss" if a["kind"] == "eval" else "train_loss"
        assert abs(a[key] - b[key]) < 1e-5
        assert abs(a.get("ar_penalty", 0) - b.get("ar_penalty", 0)) < 1e-6
