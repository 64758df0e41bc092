"""The adaptive softmax against the full softmax on WikiText-2 (word level, 33k tokens), 2 x 650 LSTM.

Issue 14's aims: training tokens/s >= 2x the full softmax's, and validation perplexity
after the same number of training tokens within 3 % of the full softmax's.

Two measurements, both printed:

1. **Throughput**, interleaved: one training step (forward, backward, clipping, AdamW) of
   each model in turn, ``--rounds`` times; the median step of each. Machine noise then
   hits both alike (this machine is shared).
2. **Quality**: ``lmgen.train`` runs of each for ``--steps`` steps (same seed, data and
   settings), then the whole validation split scored with exact full log-probabilities
   (the adaptive softmax's are exact too, so the perplexities compare).

    python benchmarks/adaptive_softmax.py                    # ~15 min on 2 CPU cores
    python benchmarks/adaptive_softmax.py --steps 200 --rounds 5   # a smoke run

Grave et al. 2017 report 2x-10x faster training than the full softmax with a perplexity
close to it, for vocabularies of 50k-800k words on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmgen import corpora
from lmgen.config import ModelConfig, TrainConfig
from lmgen.data import encode_split, prepare_tokenizer
from lmgen.model import RNNLM, detach_state
from lmgen.softmax import token_counts
from lmgen.train import train

AIM_SPEED, AIM_PPL = 2.0, 0.03


def model_config(args: argparse.Namespace, vocab: int, adaptive: bool) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, embed=args.hidden, hidden=args.hidden, layers=2, dropout=args.dropout,
                       adaptive_softmax=args.cutoffs if adaptive else "")


def step_timer(cfg: ModelConfig, counts, tokens: torch.Tensor, args: argparse.Namespace):
    """A closure timing one training step of a fresh model (seconds)."""
    torch.manual_seed(0)
    model = RNNLM(cfg).train()
    if cfg.adaptive_softmax:
        model.decoder.order_by(counts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    state, offset = None, 0

    def step() -> float:
        nonlocal state, offset
        window = tokens[:, offset : offset + args.bptt + 1]  # [B, T+1]
        offset = (offset + args.bptt) % (tokens.shape[1] - args.bptt - 1)
        start = time.perf_counter()
        loss, state = model(window[:, :-1], state, targets=window[:, 1:])
        state = detach_state(state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="wikitext-2")
    parser.add_argument("--hidden", type=int, default=650)
    parser.add_argument("--cutoffs", default="2000,10000")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=800, help="training steps of each quality run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = corpora.resolve(args.corpus)
    base = TrainConfig(corpus=args.corpus, tokenizer="word", batch=args.batch, bptt=args.bptt, lr=args.lr,
                       clip=0.25, warmup=0, schedule="constant", steps=args.steps, eval_every=args.steps,
                       eval_tokens=0, seed=1, progress=False, threads=str(args.threads or "auto"))
    tokenizer = prepare_tokenizer(corpus, "word")  # as lmgen train --tokenizer word makes it
    train_tokens = encode_split(corpus, tokenizer, "train")
    V = tokenizer.vocab_size
    counts = token_counts(train_tokens.tokens, V)
    n = args.batch * (len(train_tokens.tokens) // args.batch)
    streams = torch.as_tensor(train_tokens.tokens[:n].astype("int64")).view(args.batch, -1)
    print(f"{args.corpus}: {len(train_tokens.tokens):,} training tokens, V = {V:,}; 2 x {args.hidden} LSTM, "
          f"B={args.batch} T={args.bptt}, AdamW lr {args.lr:g}; {torch.get_num_threads()} thread(s)")

    # 1. throughput, interleaved
    full, adaptive = (step_timer(model_config(args, V, a), counts, streams, args) for a in (False, True))
    full(), adaptive()  # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {"full": [], "adaptive": []}
    for _ in range(args.rounds):
        times["full"].append(full())
        times["adaptive"].append(adaptive())
    tokens = args.batch * args.bptt
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    speedup = rate["adaptive"] / rate["full"]
    print(f"\nthroughput (median of {args.rounds} interleaved steps):")
    print(f"  full softmax      {rate['full']:>9,.0f} tok/s")
    print(f"  adaptive {args.cutoffs:<9}{rate['adaptive']:>9,.0f} tok/s   {speedup:.2f}x   "
          f"(aim >= {AIM_SPEED:g}x: {'met' if speedup >= AIM_SPEED else 'NOT met'})")

    # 2. quality after the same tokens
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, on in (("full", False), ("adaptive", True)):
            cfg = TrainConfig(**{**base.__dict__, "out": str(Path(tmp) / name)})
            result = train(cfg, model_config(args, 0, on), log=lambda m: None)
            results[name] = result
    ppl = {k: float(torch.tensor(r.val_loss).exp()) for k, r in results.items()}
    gap = ppl["adaptive"] / ppl["full"] - 1
    print(f"\nvalidation perplexity after {args.steps} steps ({args.steps * tokens:,} tokens), whole split:")
    for name, r in results.items():
        print(f"  {name:<9} {ppl[name]:>8.2f}   ({r.train_seconds:.0f} s of training, "
              f"{r.tokens / r.train_seconds:,.0f} tok/s in the run)")
    verdict = "met" if gap <= AIM_PPL else "NOT met"  # lower than the full softmax's is within it too
    print(f"  adaptive vs full: {gap:+.1%}   (aim within {AIM_PPL:.0%}: {verdict})")


if __name__ == "__main__":
    main()
