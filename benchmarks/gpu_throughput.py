"""GPU training throughput: float32 against bf16 autocast and ``torch.compile``, side by side.

Times lmgen's own training step (forward, cross-entropy, backward, clipping, fused AdamW,
carried and detached state) on CUDA for two shapes: the default char model and PTB's
2 x 650 word model. The variants are interleaved round by round, so a clock change hits
all of them alike; each figure is the best round's mean step time.

    python benchmarks/gpu_throughput.py            # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from lmgen.config import ModelConfig, TrainConfig
from lmgen.evaluate import autocast_for
from lmgen.model import RNNLM, detach_state
from lmgen.train import make_optimizer

SHAPES = {  # name: (model, batch, bptt)
    "char 2x512": (ModelConfig(vocab_size=100, embed=64, hidden=512, layers=2), 32, 64),
    "word 2x650 V=10k": (ModelConfig(vocab_size=10000, embed=650, hidden=650, layers=2, tie=True), 32, 70),
}


def make_step(cfg: ModelConfig, B: int, T: int, amp: bool, compiled: bool):
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = RNNLM(cfg).to(device)
    opt = make_optimizer(model, TrainConfig(lr=1e-3))
    forward = torch.compile(model) if compiled else model
    x = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    carried = {"h": None}

    def step() -> None:
        with autocast_for(device, amp):
            logits, h = forward(x[:, :-1], carried["h"])
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        carried["h"] = detach_state(h)

    return step


def seconds_per_step(step, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to time", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    variants = {"float32": (False, False), "bf16": (True, False), "compile": (False, True),
                "bf16+compile": (True, True)}
    for shape, (cfg, B, T) in SHAPES.items():
        steps = {}
        for name, (amp, compiled) in variants.items():
            try:
                steps[name] = make_step(cfg, B, T, amp, compiled)
                for _ in range(3):  # warm-up (compilation happens here)
                    steps[name]()
            except Exception as exc:  # a variant that fails is reported, the others still run
                print(f"{shape} {name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                steps.pop(name, None)
        best = {name: float("inf") for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                best[name] = min(best[name], seconds_per_step(step, args.steps))
        base = best.get("float32")
        for name, sec in best.items():
            ratio = f" ({base / sec:.2f}x float32)" if base else ""
            print(f"{shape}, B={B} T={T}: {name:13s} {B * T / sec:12,.0f} tok/s{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
