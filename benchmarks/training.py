"""Training benchmark: throughput beside a reference loop, and loss after fixed wall time.

Part 1 (``--throughput``) times one training step of lmgen (batch-first RNNLM, AdamW,
clipping, carried state) beside a loop written here in the style of PyTorch's
word_language_model example (sequence-first ``nn.LSTM``, dropout, clipping, manual SGD
update ``p -= lr * grad``; https://github.com/pytorch/examples/tree/main/word_language_model),
for the same sizes, interleaved so machine noise hits both alike.

Part 2 (``--budgets 52s,3m``) trains lmgen's default char recipe on tinyshakespeare
(nanoGPT's 90/10 split) once per budget and prints the validation loss in nats/char.
The reference point, measured on this 2-core machine with torch 2.13.0 CPU: nanoGPT's
documented CPU recipe (4 x 128 transformer, block 64, batch 12, 2000 iterations)
reaches 1.886 after 105 s of training, at ~14,700 tokens/s.

    python benchmarks/training.py --throughput
    python benchmarks/training.py --budgets 52s,1m,3m,10m
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmgen.config import ModelConfig, TrainConfig, parse_duration
from lmgen.model import RNNLM, detach_state
from lmgen.schedule import make_optimizer
from lmgen.train import train


class ExampleStyleLSTM(nn.Module):
    """The shape of word_language_model's RNNModel: (T, B) in, (T, B, V) out."""

    def __init__(self, V: int, E: int, H: int, L: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(V, E)
        self.rnn = nn.LSTM(E, H, L, dropout=dropout if L > 1 else 0.0)
        self.decoder = nn.Linear(H, V)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def time_steps(step, n: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def throughput(V=67, E=64, H=512, L=1, B=32, T=64, dropout=0.0, steps=20, rounds=3, optimizer="adamw") -> None:
    torch.manual_seed(0)
    x = torch.randint(0, V, (B, T + 1))
    ours = RNNLM(ModelConfig(vocab_size=V, embed=E, hidden=H, layers=L, dropout=dropout))
    opt = make_optimizer(ours, TrainConfig(optimizer=optimizer, lr=1.0 if optimizer == "sgd" else 1e-3))
    state = {"h": None}

    def lmgen_step():
        logits, h = ours(x[:, :-1], state["h"])
        loss = F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["h"] = detach_state(h)

    ref = ExampleStyleLSTM(V, E, H, L, dropout)
    xt = x.t().contiguous()  # [T+1, B]
    ref_state = {"h": None}

    def example_step():
        ref.zero_grad()
        out, h = ref(xt[:-1], ref_state["h"])
        loss = F.cross_entropy(out.view(-1, V), xt[1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.25)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(p.grad, alpha=-20.0 * 1e-3)
        ref_state["h"] = tuple(s.detach() for s in h)

    ours_t, ref_t = [], []
    for _ in range(rounds):
        ours_t.append(time_steps(lmgen_step, steps))
        ref_t.append(time_steps(example_step, steps))
    a, b = min(ours_t), min(ref_t)
    print(f"{L}x{H} LSTM, E={E}, B={B}, T={T}, V={V}, threads={torch.get_num_threads()}: "
          f"lmgen ({optimizer}) {B * T / a:,.0f} tok/s | word_language_model-style loop {B * T / b:,.0f} tok/s "
          f"| ratio {b / a:.2f}", flush=True)


def budgets(spec: str, corpus: str, model: ModelConfig, extra: dict) -> None:
    for budget in spec.split(","):
        seconds = parse_duration(budget)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.time()
            cfg = TrainConfig(corpus=corpus, time=budget, out=out, progress=False,
                              eval_every=10**9, **extra)
            result = train(cfg, model, log=lambda m: None)
            print(f"{corpus} char, {model.layers}x{model.hidden} {model.cell}, budget {budget} ({seconds:.0f} s): "
                  f"val loss {result.val_loss:.4f} nats/char after {result.train_seconds:.1f} s of training, "
                  f"{result.steps} steps, {result.tokens / result.train_seconds:,.0f} tok/s, "
                  f"{time.time() - t0:.0f} s wall", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--throughput", action="store_true", help="time lmgen beside the example-style loop")
    p.add_argument("--budgets", default="", help="comma-separated training-time budgets, e.g. 52s,3m")
    p.add_argument("--corpus", default="tinyshakespeare")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.throughput and not args.budgets:
        p.error("pass --throughput and/or --budgets")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads", flush=True)
    if args.throughput:
        defaults = ModelConfig()
        cfg = TrainConfig()
        for optimizer in ("adamw", "sgd"):  # lmgen's default, and the example's own optimiser
            throughput(E=defaults.embed, H=defaults.hidden, L=defaults.layers, B=cfg.batch, T=cfg.bptt,
                       optimizer=optimizer)
            throughput(E=200, H=200, L=2, B=20, T=35, V=10000, optimizer=optimizer)  # the example's defaults
            throughput(E=650, H=650, L=2, B=20, T=35, V=10000, steps=5, rounds=2, optimizer=optimizer)
    if args.budgets:
        budgets(args.budgets, args.corpus, ModelConfig(), {})


if __name__ == "__main__":
    sys.exit(main())
