"""Pattern search (LSTMVis's "match", ``lmgen.probe.find_pattern``) on the URL benchmark's model (issue 18).

Aim: selecting one URL in part A of the held-out Wikipedia pages, at least 8 of the top 10
matches in part B lie inside URLs. The held-out text, its A/B split and URL_REGEX are
``benchmarks/url_neuron.py``'s. Each selection is a whole URL of part A (the first
``--selections`` of at least ``--min-length`` characters, in text order: fixed before any
run, nothing chosen by looking at B). A match is "inside" when most of its characters are
URL characters. Prints each selection's count and the median.

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
    p.add_argument("--threshold", type=float, default=0.3, help="find_pattern's threshold")
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
    print(f"{ckpt.folder}: {pages} held-out pages, A = [0, {split_at:,}), B = [{split_at:,}, {len(text):,}); "
          f"{len(urls)} URLs of >= {args.min_length} chars in A; threshold {args.threshold}, kinds h and c, signed")
    counts = []
    for m in urls[: args.selections]:
        try:
            pattern = find_pattern(tr, m.start(), m.end(), args.threshold, kinds=("h", "c"),
                                   search=(split_at, len(text)), signed=True)
        except ConfigError as exc:  # no unit on all through this URL and off around it
            print(f"  {m.group(0)[:50]!r:54s} no pattern ({exc})")
            counts.append(0)
            continue
        top = pattern.matches[:10]
        hits = sum(float(np.mean(inside[x.start : x.end])) > 0.5 for x in top)
        counts.append(hits)
        print(f"  {m.group(0)[:50]!r:54s} {len(pattern.units):3d} units  {hits}/{len(top)} of the top matches "
              f"inside URLs")
    if counts:
        first, median = counts[0], statistics.median(counts)
        print(f"first selection: {first}/10 (aim >= {AIM}: {'met' if first >= AIM else 'NOT met'}); "
              f"median over {len(counts)} selections: {median:g}/10")


if __name__ == "__main__":
    main()
