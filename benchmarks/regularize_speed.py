"""Training-speed cost of each AWD-LSTM regulariser (lmgen.regularize) against the plain model.

One training step (AdamW, clipping, carried state) of the default char model (1 x 256 LSTM,
E=64, V=67, B=32, T=64), timed for each option alone and all together. Rounds are
interleaved, so machine noise hits every variant alike; the median round is printed.

    python benchmarks/regularize_speed.py                 # the default char model
    python benchmarks/regularize_speed.py --layers 3      # locked dropout between layers too
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lmgen.config import ModelConfig
from lmgen.model import RNNLM, detach_state

VARIANTS = {
    "plain": {},
    "--dropout 0.2 (per step)": {"dropout": 0.2},
    "--dropout-input/-output 0.2": {"dropout_input": 0.2, "dropout_output": 0.2},
    "--dropout-hidden 0.2": {"dropout_hidden": 0.2},
    "--dropout-embed 0.1": {"dropout_embed": 0.1},
    "--weight-drop 0.5": {"weight_drop": 0.5},
    "all of them": {"dropout_input": 0.2, "dropout_hidden": 0.2, "dropout_output": 0.2, "dropout_embed": 0.1,
                    "weight_drop": 0.5},
}


def make_step(options: dict, args: argparse.Namespace):
    """A closure running one training step of a fresh model with ``options``."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, embed=args.embed, hidden=args.hidden, layers=args.layers,
                      cell=args.cell, **options)
    model = RNNLM(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, args.vocab, (args.batch, args.bptt + 1))  # [B, T+1]
    state = None

    def step() -> None:
        nonlocal state
        logits, state = model(data[:, :-1], state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--vocab", type=int, default=67)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {name: make_step(options, args) for name, options in VARIANTS.items()}
    for step in steps.values():
        step()  # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    tokens = args.batch * args.bptt
    base = statistics.median(times["plain"])
    print(f"{args.cell} {args.layers} x {args.hidden}, E={args.embed}, V={args.vocab}, B={args.batch}, "
          f"T={args.bptt}, {args.threads} threads, median of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"{'variant':<30} {'tokens/s':>10} {'ms/step':>9} {'vs plain':>9}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<30} {tokens / t:>10,.0f} {1000 * t:>9.1f} {base / t:>8.2f}x")


if __name__ == "__main__":
    main()
