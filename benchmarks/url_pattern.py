"""Pattern search (LSTMVis's "match", ``lmgen.probe.find_pattern``) on the URL benchmark's model (issue 18).

Aim: selecting one URL in part A of the held-out Wikipedia pages, at least 8 of the top 10
matches in part B lie inside URLs. The held-out text, its A/B split and URL_REGEX are
``benchmarks/url_neuron.py``'s. Each selection is a whole URL of part A, the URLs of at least
``--min-length`` characters in text order. A match is "inside" when most of its characters
are URL characters.

LSTMVis's rule (threshold 0.3, units on at every character and off just before and after)
finds no pattern for 9 of the first 10 URLs: the URL cell builds up over "http://" and fades
after the URL. The setting marked "chosen" (threshold 0.5, ``lag=2``, ``off_after=False``,
and the ``cover`` term of the match score) was chosen by looking at selections 0-9 and their
matches in B, so it is scored again on selections 10-29, which were not looked at: those
are the aim's figures.

    python benchmarks/url_neuron.py --out /tmp/url      # trains and keeps the model (or any run folder)
    python benchmarks/url_pattern.py /tmp/url
"""

from __future__ import annotations

import argparse
import re
import statistics

import numpy as np
import torch
from url_neuron import held_out_pages

from lmgen import corpora
from lmgen.activations import regex_mask, trace
from lmgen.checkpoint import load_checkpoint
from lmgen.errors import ConfigError
from lmgen.probe import URL_REGEX, find_pattern

AIM = 8  # of the top 10
# (threshold, lag, off_after, label); "chosen" is the aim's setting (see the docstring).
SETTINGS = [
    (0.3, 0, True, "LSTMVis's rule"),
    (0.5, 2, False, "chosen"),
    (0.3, 2, False, "a neighbour"),
    (0.5, 3, False, "a neighbour"),
    (1.0, 3, False, "a neighbour"),
    (0.5, 2, True, "the chosen setting, off after the URL required"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder of benchmarks/url_neuron.py (or any enwiki char model)")
    p.add_argument("--selections", type=int, default=30, help="URLs of part A selected, one at a time")
    p.add_argument("--seen", type=int, default=10,
                   help="the first this many selections were looked at while choosing the setting")
    p.add_argument("--min-length", type=int, default=20, help="shortest URL selected (characters)")
    p.add_argument("--max-chars", type=int, default=0, help="cap on held-out characters (0 = all pages)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.run)
    text, split_at, pages = held_out_pages(corpora.resolve("enwiki-xml-sample"), args.max_chars)
    tr = trace(ckpt.model, ckpt.tokenizer, text, allow_unknown=True, kinds=("h", "c"))
    inside = regex_mask(text, URL_REGEX)
    urls = [m for m in re.finditer(URL_REGEX, text[:split_at]) if m.end() - m.start() >= args.min_length]
    urls = urls[: args.selections]
    print(f"{ckpt.folder}: {pages} held-out pages, A = [0, {split_at:,}), B = [{split_at:,}, {len(text):,}); "
          f"the first {len(urls)} URLs of >= {args.min_length} chars in A; kinds h and c, signed")
    print(f"top-10 matches in B inside URLs, per selection (units in the pattern; '-': no pattern); selections "
          f"0-{args.seen - 1} were seen while choosing, {args.seen}-{len(urls) - 1} were not")
    aim = None
    for threshold, lag, off_after, label in SETTINGS:
        cells, counts = [], []
        for m in urls:
            try:
                pattern = find_pattern(tr, m.start(), m.end(), threshold, kinds=("h", "c"), signed=True,
                                       search=(split_at, len(text)), lag=lag, off_after=off_after)
            except ConfigError:
                cells.append("-")
                counts.append(0)
                continue
            top = pattern.matches[:10]
            counts.append(sum(float(np.mean(inside[x.start : x.end])) > 0.5 for x in top))
            cells.append(f"{counts[-1]}({len(pattern.units)})")
        seen, unseen = counts[: args.seen], counts[args.seen :]
        print(f"\n  threshold {threshold}, lag {lag}, off_after {off_after}: {label}")
        print(f"    seen   {' '.join(f'{c:>6s}' for c in cells[: args.seen])}  median {statistics.median(seen):g}")
        if unseen:
            print(f"    unseen {' '.join(f'{c:>6s}' for c in cells[args.seen :])}  median "
                  f"{statistics.median(unseen):g}, {sum(c >= AIM for c in unseen)} of {len(unseen)} >= {AIM}")
            if label == "chosen":
                aim = unseen
    if aim:
        ok = statistics.median(aim) >= AIM
        print(f"\nchosen setting on the unseen selections: median {statistics.median(aim):g}/10, "
              f"{sum(c >= AIM for c in aim)} of {len(aim)} selections with >= {AIM} of 10 inside URLs "
              f"(aim, read as the median: {'met' if ok else 'NOT met'})")

if __name__ == "__main__":
    main()
