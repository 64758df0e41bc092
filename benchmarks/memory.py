"""Memory on a corpus larger than we would like to hold: encode and train on a 1 GB file.

Generates a text file of ``--size`` bytes (random words from a fixed list, one seed, lines
of varying length), then runs ``lmgen train`` on it for a few steps in this process and
prints the peak resident memory next to the file size. The corpus streams through
fingerprinting, the 90/5/5 character split, the vocabulary pass and the encoding into a
uint16 memmap, and training reads windows from that memmap, so the peak should stay far
below the file size (aim: < 500 MB for 1 GB).

    python benchmarks/memory.py --size 1G
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will "
         "more out up into do any your what some can its about time only new could then other these "
         "https://example.org/path?x=1 [[link]] \"quoted\" café naïve 東京 ").split()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def generate(path: Path, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = np.array(WORDS, dtype=object)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            picks = words[rng.integers(0, len(words), 200_000)]
            breaks = rng.random(200_000) < 0.08
            text = "".join(w + ("\n" if b else " ") for w, b in zip(picks, breaks))
            f.write(text)
            written += len(text.encode("utf-8"))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1G", help="corpus size, e.g. 200M or 1G")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the generated file and caches")
    args = p.parse_args()
    size = parse_size(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="lmgen-memory-"))
    os.environ["LMGEN_CACHE"] = str(tmp / "cache")
    corpus = tmp / "big.txt"
    t0 = time.time()
    generate(corpus, size)
    print(f"generated {corpus.stat().st_size / 1e6:,.0f} MB in {time.time() - t0:.0f} s; peak RSS so far "
          f"{rss_mb():,.0f} MB", flush=True)

    from lmgen.config import ModelConfig, TrainConfig
    from lmgen.train import train

    t0 = time.time()
    result = train(TrainConfig(corpus=str(corpus), steps=args.steps, eval_every=args.steps, eval_tokens=10_000,
                               batch=32, bptt=64, out=str(tmp / "run"), progress=False),
                   ModelConfig(hidden=128), log=lambda m: print("  " + m, flush=True))
    print(f"encoded and trained {result.steps} steps in {time.time() - t0:.0f} s", flush=True)
    print(f"corpus {size / 1e6:,.0f} MB | peak RSS {rss_mb():,.0f} MB "
          f"({rss_mb() * (1 << 20) / size * 100:.1f} % of the file) | aim < 500 MB", flush=True)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
