"""Pattern search (LSTMVis's "match", ``lmgen.probe.find_pattern``) on the URL benchmark's model (issue 18).

Aim: selecting one URL in part A of the held-out Wikipedia pages, at least 8 of the top 10
matches in part B lie inside URLs. The held-out text, its A/B split and URL_REGEX are
``benchmarks/url_neuron.py``'s. Each selection is a whole URL of part A (the first
``--selections`` of at least ``--min-length`` characters, in text order: fixed before any
run, nothing chosen by looking at B). A match is "inside" when most of its characters are
URL characters. Prints each selection's count and the median, for LSTMVis's rule (``--lags
0``) and for units allowed to switch on and off a few characters late (``lag``: the URL
cell builds up over "http://" and fades after the URL). The aim is read on the first
selection at the first threshold and lag given.

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder of benchmarks/url_neuron.py (or any enwiki char model)")
    p.add_argument("--selections", type=int, default=10, help="URLs of part A selected, one at a time")
    p.add_argument("--min-length", type=int, default=20, help="shortest URL selected (characters)")
    p.add_argument("--thresholds", default="0.3,0.5", help="find_pattern thresholds, comma-separated")
    p.add_argument("--lags", default="0,1,2,3", help="find_pattern lags, comma-separated")
    p.add_argument("--max-chars", type=int, default=0, help="cap on held-out characters (0 = all pages)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = [float(x) for x in args.thresholds.split(",")]
    lags = [int(x) for x in args.lags.split(",")]
    ckpt = load_checkpoint(args.run)
    text, split_at, pages = held_out_pages(corpora.resolve("enwiki-xml-sample"), args.max_chars)
    tr = trace(ckpt.model, ckpt.tokenizer, text, allow_unknown=True, kinds=("h", "c"))
    inside = regex_mask(text, URL_REGEX)
    urls = [m for m in re.finditer(URL_REGEX, text[:split_at]) if m.end() - m.start() >= args.min_length]
    urls = urls[: args.selections]
    print(f"{ckpt.folder}: {pages} held-out pages, A = [0, {split_at:,}), B = [{split_at:,}, {len(text):,}); "
          f"the first {len(urls)} URLs of >= {args.min_length} chars in A; kinds h and c, signed")
    for i, m in enumerate(urls):
        print(f"  selection {i}: {m.group(0)[:70]!r}")
    print("top-10 matches in B inside URLs, per selection (units in the pattern; '-': no unit on all through "
          "the selection and off around it)")
    first = None
    for threshold in thresholds:
        for lag in lags:
            cells, counts = [], []
            for m in urls:
                try:
                    pattern = find_pattern(tr, m.start(), m.end(), threshold, kinds=("h", "c"),
                                           search=(split_at, len(text)), signed=True, lag=lag)
                except ConfigError:
                    cells.append("-")
                    counts.append(0)
                    continue
                top = pattern.matches[:10]
                hits = sum(float(np.mean(inside[x.start : x.end])) > 0.5 for x in top)
                cells.append(f"{hits}({len(pattern.units)})")
                counts.append(hits)
            first = counts[0] if first is None else first
            print(f"  threshold {threshold} lag {lag}: {' '.join(f'{c:>6s}' for c in cells)}   "
                  f"median {statistics.median(counts):g}/10")
    if first is not None:
        print(f"first selection, threshold {thresholds[0]}, lag {lags[0]}: {first}/10 "
              f"(aim >= {AIM}: {'met' if first >= AIM else 'NOT met'})")

if __name__ == "__main__":
    main()
