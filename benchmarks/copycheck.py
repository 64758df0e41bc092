"""Originality figures (issue 17): how much a tinyshakespeare char model copies from its
training text, what ``--max-copy`` costs, and what the copy index costs to build.

Part 1 (unless ``--index-only``): ``--samples`` samples of ``--chars`` characters at
temperature 0.8 (seeds 0, 1, ...), one stream at a time as ``lmgen sample`` runs them,
each generated twice, plain and with ``--max-copy``, the two interleaved so machine noise
hits both alike. Prints the distribution of the longest copied span (min, median, p90,
max) and the 8-gram share for both, tokens/s for both and their ratio (aim <= 1.5x), and
checks that no guarded sample holds a training span longer than the limit. Without
``--checkpoint`` it first trains lmgen's default char model on tinyshakespeare for
``--train-time``.

Part 2 (``--index-size``): generates the corpus of ``benchmarks/memory.py`` (random words,
one seed), encodes its training split, then builds its copy index in a fresh process (no
torch loaded) and prints the build time and that process's peak RSS (aim for 1 GB of
text: < 1 GB).

    python benchmarks/copycheck.py --checkpoint checkpoints/shakespeare
    python benchmarks/copycheck.py --train-time 10m --samples 100 --chars 500 --index-size 100M
    python benchmarks/copycheck.py --index-only --index-size 1G
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BUILD_CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
from lmgen.copycheck import open_index
path, dtype, n, vocab = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokens = np.memmap(path, dtype, mode="r", shape=(n,))
start = time.perf_counter()
index = open_index(path, tokens, vocab)
seconds = time.perf_counter() - start
# VmHWM, the peak RSS of this process's own memory: ru_maxrss would also count the parent's
# resident memory at fork time (Linux keeps it across exec)
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "built": index.built, "torch": "torch" in sys.modules}))
"""


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spans_line(label: str, reports: list) -> str:
    spans = [r.longest for r in reports]
    shares = [r.share for r in reports if r.share is not None]
    share = 100 * statistics.mean(shares)
    return (f"{label:<16} longest copied span (chars): min {min(spans)}, median {statistics.median(spans):g}, "
            f"p90 {percentile(spans, 0.9):g}, max {max(spans)}; 8-grams in training {share:.1f} %")


def checkpoint_or_train(args: argparse.Namespace, tmp: Path) -> str:
    if args.checkpoint:
        return args.checkpoint
    from lmgen.config import ModelConfig, TrainConfig
    from lmgen.train import train

    out = tmp / "run"
    print(f"training lmgen's default char model on tinyshakespeare for {args.train_time}...", flush=True)
    result = train(TrainConfig(corpus="tinyshakespeare", time=args.train_time, eval_every=500, eval_tokens=20_000,
                               out=str(out), progress=False, threads="1"), ModelConfig(), log=lambda m: None)
    print(f"  {result.steps} steps, best validation loss {result.best_val_loss:.3f} nats/char", flush=True)
    return str(out)


def sampling(args: argparse.Namespace, tmp: Path) -> None:
    import torch

    from lmgen.checkpoint import load_checkpoint
    from lmgen.copycheck import CopyGuard, copy_report, training_index
    from lmgen.sampling import GenerationConfig, generate, prime

    torch.set_num_threads(1)
    ckpt = load_checkpoint(checkpoint_or_train(args, tmp))
    tok = ckpt.tokenizer
    start = time.perf_counter()
    index = training_index(ckpt, log=lambda m: print("  " + m, flush=True))
    print(f"copy index of {index.n:,} training tokens: {'built' if index.built else 'opened'} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    config = GenerationConfig(temperature=args.temperature, max_new_tokens=args.chars, min_new_tokens=args.chars)
    reports: dict[str, list] = {"plain": [], "max-copy": []}
    seconds = dict.fromkeys(reports, 0.0)
    tokens = dict.fromkeys(reports, 0)
    masked = 0
    for seed in range(args.samples):
        for mode in reports:
            ctx = prime(ckpt.model, tok, "")
            if mode == "max-copy":
                ctx.guard = guard = CopyGuard(index, args.max_copy)
            t0 = time.perf_counter()
            sample = generate(ckpt.model, tok, ctx, config, generator=torch.Generator().manual_seed(seed))[0]
            seconds[mode] += time.perf_counter() - t0
            tokens[mode] += len(sample.ids)
            reports[mode].append(copy_report(index, tok, sample.ids))
            masked += guard.masked if mode == "max-copy" else 0
    print(f"\n{args.samples} samples of {args.chars} chars, temperature {args.temperature}, one stream at a time")
    for mode, found in reports.items():
        print(spans_line(mode if mode == "plain" else f"--max-copy {args.max_copy}", found))
    rate = {mode: tokens[mode] / seconds[mode] for mode in reports}
    print(f"tokens/s: plain {rate['plain']:,.0f}, --max-copy {args.max_copy} {rate['max-copy']:,.0f}: "
          f"cost {rate['plain'] / rate['max-copy']:.2f}x (aim <= 1.5x); {masked:,} tokens masked in all")
    over = [r.longest for r in reports["max-copy"] if r.longest > args.max_copy]
    print(f"guarded samples with a copy longer than {args.max_copy}: {len(over)}" + (" (BUG)" if over else ""))

    batch = config.replace(num_return_sequences=args.samples)
    times = {}
    for mode in ("plain", "max-copy"):
        ctx = prime(ckpt.model, tok, "")
        if mode == "max-copy":
            ctx.guard = CopyGuard(index, args.max_copy)
        t0 = time.perf_counter()
        generate(ckpt.model, tok, ctx, batch, generator=torch.Generator().manual_seed(0))
        times[mode] = time.perf_counter() - t0
    n = args.samples * args.chars
    print(f"the {args.samples} samples as one batch: plain {n / times['plain']:,.0f} tokens/s, --max-copy "
          f"{n / times['max-copy']:,.0f} tokens/s ({times['max-copy'] / times['plain']:.2f}x: the guard walks each row "
          "in Python, the model steps all rows at once)", flush=True)


def index_build(args: argparse.Namespace, tmp: Path) -> None:
    spec = importlib.util.spec_from_file_location("memory_benchmark", HERE / "memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)  # type: ignore[union-attr]
    size = memory.parse_size(args.index_size)
    os.environ["LMGEN_CACHE"] = str(tmp / "cache")
    corpus_path = tmp / "big.txt"
    t0 = time.perf_counter()
    memory.generate(corpus_path, size)
    print(f"\ngenerated {corpus_path.stat().st_size / 1e6:,.0f} MB (benchmarks/memory.py's corpus) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    from lmgen import corpora
    from lmgen.data import encode_split, prepare_tokenizer

    corpus = corpora.resolve(str(corpus_path))
    tok = prepare_tokenizer(corpus, "char")
    t0 = time.perf_counter()
    split = encode_split(corpus, tok, "train")
    print(f"encoded its training split: {len(split):,} tokens ({split.tokens.dtype}) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    child = subprocess.run([sys.executable, "-c", BUILD_CHILD, str(split.path), split.tokens.dtype.name,
                            str(len(split)), str(tok.vocab_size)], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    if child.returncode != 0:
        raise SystemExit(f"the index build failed:\n{child.stderr}")
    got = json.loads(child.stdout.strip().splitlines()[-1])
    disk = split.path.with_suffix(".sa").stat().st_size
    print(f"copy index of {len(split):,} tokens: built in {got['seconds']:.0f} s "
          f"({len(split) / got['seconds'] / 1e6:.2f} M tokens/s), peak RSS of the building process "
          f"{got['peak_rss_mb']:,.0f} MB (torch loaded: {got['torch']}), {disk / 1e6:,.0f} MB on disk; "
          f"corpus {size / 1e6:,.0f} MB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a tinyshakespeare char checkpoint (default: train one)")
    p.add_argument("--train-time", default="10m", help="training time when no checkpoint is given")
    p.add_argument("--samples", type=int, default=100, help="samples generated (each plain and guarded)")
    p.add_argument("--chars", type=int, default=500, help="characters per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--max-copy", type=int, default=20, help="the --max-copy limit measured")
    p.add_argument("--index-size", default=None, help="also build the index of benchmarks/memory.py's corpus "
                                                      "of this size, e.g. 100M or 1G")
    p.add_argument("--index-only", action="store_true", help="only the index build (part 2)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmgen-copycheck-") as folder:
        tmp = Path(folder)
        if not args.index_only:
            sampling(args, tmp)
        if args.index_size:
            index_build(args, tmp)


if __name__ == "__main__":
    main()
