"""The CUDA path: training, evaluation, checkpoints and sampling on a GPU agree with the CPU.

Every test here is marked ``gpu``: without CUDA they are skipped and the run's summary says
how many ("N GPU tests not run: no CUDA"), so an untested GPU path is never silent.
``benchmarks/gpu_check.sh`` runs them first on a lent GPU machine.

cuDNN's kernels sum in another order than the CPU's, so CPU and GPU agree to a tolerance,
not bit for bit; each tolerance below is far tighter than any real bug would give.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmgen.checkpoint import load_checkpoint
from lmgen.config import ModelConfig, TrainConfig
from lmgen.evaluate import evaluate_tokens
from lmgen.model import RNNLM
from lmgen.train import train

pytestmark = pytest.mark.gpu


def _tiny_run(tiny_corpus, out, device: str, amp: bool = False, steps: int = 30, cell: str = "lstm"):
    cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=32, steps=steps, eval_every=steps, log_every=5,
                      lr=2e-2, warmup=0, schedule="constant", progress=False, out=str(out), seed=0, device=device,
                      amp=amp)
    return train(cfg, ModelConfig(cell=cell, embed=16, hidden=32, layers=2), log=lambda msg: None)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cuda_training_follows_the_cpu(tmp_path, tiny_corpus, cell):
    cpu = _tiny_run(tiny_corpus, tmp_path / "cpu", "cpu", cell=cell)
    gpu = _tiny_run(tiny_corpus, tmp_path / "gpu", "cuda", cell=cell)
    # Same seed, same data: the float32 runs may differ only by summation order.
    assert gpu.train_loss == pytest.approx(cpu.train_loss, rel=2e-3)
    assert gpu.val_loss == pytest.approx(cpu.val_loss, rel=2e-3)


def test_bf16_autocast_training_learns(tmp_path, tiny_corpus):
    run = _tiny_run(tiny_corpus, tmp_path / "bf16", "cuda", amp=True, steps=60)
    assert math.isfinite(run.val_loss)
    start = _tiny_run(tiny_corpus, tmp_path / "bf16-0", "cuda", amp=True, steps=1)
    assert run.val_loss < start.val_loss - 0.5  # it learned, in bf16


def test_cuda_evaluation_equals_the_cpu():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=50, embed=16, hidden=32, layers=2))
    tokens = np.random.default_rng(0).integers(0, 50, size=3000)
    cpu = evaluate_tokens(model, tokens, batch=4, bptt=64)
    gpu = evaluate_tokens(model.cuda(), tokens, batch=4, bptt=64)
    assert gpu.tokens == cpu.tokens
    assert gpu.nll == pytest.approx(cpu.nll, rel=1e-5)


def test_a_cuda_checkpoint_loads_on_the_cpu_with_the_same_logits(tmp_path, tiny_corpus):
    _tiny_run(tiny_corpus, tmp_path / "run", "cuda")
    on_gpu = load_checkpoint(tmp_path / "run", "cuda").model.eval()
    on_cpu = load_checkpoint(tmp_path / "run", "cpu").model.eval()
    x = torch.randint(0, on_cpu.config.vocab_size, (2, 40))
    with torch.no_grad():
        a, _ = on_cpu(x)
        b, _ = on_gpu(x.cuda())
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


def test_cuda_training_resumes_exactly(tmp_path, tiny_corpus):
    """Stop at step 20 and resume to 40: the weights equal one 40-step run (same device)."""
    whole = _tiny_run(tiny_corpus, tmp_path / "whole", "cuda", steps=40)
    _tiny_run(tiny_corpus, tmp_path / "cut", "cuda", steps=20)
    cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=32, steps=40, eval_every=40, log_every=5, lr=2e-2,
                      warmup=0, schedule="constant", progress=False, out=str(tmp_path / "cut"), seed=0, device="cuda",
                      amp=False,
                      resume=True)
    resumed = train(cfg, log=lambda msg: None)
    assert resumed.steps == whole.steps == 40
    a = load_checkpoint(tmp_path / "whole" / "last", "cpu").model.state_dict()
    b = load_checkpoint(tmp_path / "cut" / "last", "cpu").model.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def _regularised_training(device: str, steps: int = 40) -> tuple[RNNLM, list[float]]:
    """A 2-layer LSTM with weight drop, locked and embedding dropout, fitted to one batch on ``device``."""
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=50, embed=16, hidden=32, layers=2, weight_drop=0.5, dropout_input=0.2,
                              dropout_hidden=0.2, dropout_output=0.3, dropout_embed=0.1)).to(device).train()
    tokens = torch.randint(0, 50, (4, 65), generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_cuda_trains_with_weight_drop_and_locked_dropout_and_evaluates_like_the_cpu():
    model, losses = _regularised_training("cuda")
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.25  # learned through dropped weights (CPU: 3.87 -> 3.37)
    # evaluation runs the fused module on the full weights, on either device
    on_cpu = RNNLM(model.config)
    on_cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    x = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        a, _ = on_cpu.eval()(x)
        b, _ = model(x.cuda())
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_cuda_trains_with_ar_tar_jitter_and_averaging_like_the_cpu(tmp_path, tiny_corpus, amp):
    """Issue 14's step options on CUDA: AR/TAR (in float32 under autocast), drawn window lengths, an EMA."""
    results = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=32, steps=30, eval_every=10, log_every=5, lr=2e-2,
                          warmup=0, schedule="constant", progress=False, out=str(tmp_path / device), seed=0,
                          device=device, amp=amp, ar=2.0, tar=1.0, bptt_jitter=5.0, average="ema:0.9")
        results[device] = train(cfg, ModelConfig(embed=16, hidden=32, layers=2), log=lambda msg: None)
    assert math.isfinite(results["cuda"].val_loss)
    state = torch.load(tmp_path / "cuda" / "last" / "train_state.pt", weights_only=True)
    assert state["average"]["count"] == 30 and all(t.device.type == "cpu" for t in state["average"]["weights"].values())
    if not amp:  # float32 on both: the same run up to summation order
        assert results["cuda"].val_loss == pytest.approx(results["cpu"].val_loss, rel=2e-3)
        a = load_checkpoint(tmp_path / "cpu" / "last", "cpu").model.state_dict()
        b = load_checkpoint(tmp_path / "cuda" / "last", "cpu").model.state_dict()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_cuda_trains_awd_shape_with_an_adaptive_softmax_like_the_cpu(tmp_path, tiny_corpus, amp):
    """Layers of different sizes (cells.LayerStack) and the adaptive softmax on CUDA; sampling on the result."""
    from lmgen.sampling import GenerationConfig, generate

    results = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=32, steps=30, eval_every=10, lr=2e-2, warmup=0,
                          schedule="constant", progress=False, out=str(tmp_path / device), seed=0, device=device,
                          amp=amp)
        model = ModelConfig(embed=16, hidden=[32, 16], adaptive_softmax="8,20", weight_drop=0.3, dropout_hidden=0.2)
        results[device] = train(cfg, model, log=lambda msg: None)
    assert math.isfinite(results["cuda"].val_loss)
    if not amp:
        assert results["cuda"].val_loss == pytest.approx(results["cpu"].val_loss, rel=2e-3)
    ckpt = load_checkpoint(tmp_path / "cuda" / "last", "cuda")
    samples = generate(ckpt.model, ckpt.tokenizer, "The ", GenerationConfig(max_new_tokens=20, num_return_sequences=3))
    assert len(samples) == 3
