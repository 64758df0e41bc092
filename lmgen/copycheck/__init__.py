"""Originality: how much of a generated text is copied from the training split, and a
decoding constraint that keeps copies short.

    lmgen copycheck CKPT samples.txt          the longest copied span of each sample, where it
                                              is, and the share of its n-grams found in training
    lmgen sample CKPT --check-copy            the same report after each sample
    lmgen sample CKPT --max-copy 20           never more than 20 tokens in a row from training

The package, by job (each module imports only those above it)::

    build.py   the suffix array of the training token ids read backwards, in bounded memory
    index.py   CopyIndex: opened from beside the token file (built there once); the walk
               that finds the longest training span a text ends with
    report.py  CopyReport, copy_report: a text's longest copy and n-gram share; split_samples
    guard.py   CopyGuard: --max-copy, the tokens to mask before each choice

>>> index = training_index(ckpt)                                          # doctest: +SKIP
>>> print(copy_report(index, ckpt.tokenizer, ckpt.tokenizer.encode(text)).format())  # doctest: +SKIP
longest copied span: 23 characters, at 104-126 of the text's 500; in training at character 51,234 (1 occurrence)
"""

from typing import Any

from .build import build_suffix_array
from .index import CopyIndex, index_of_tokens, open_index, training_index
from .report import CopyReport, copy_report, match_lengths, ngram_order, split_samples

__all__ = [
    "build_suffix_array",
    "CopyIndex", "open_index", "index_of_tokens", "training_index",
    "CopyReport", "copy_report", "match_lengths", "ngram_order", "split_samples",
    "CopyGuard",
]


def __getattr__(name: str) -> Any:
    # CopyGuard works on torch tensors; the index and the reports need only numpy, so a
    # process that only builds an index (benchmarks/copycheck.py measures its memory)
    # never loads torch.
    if name == "CopyGuard":
        from .guard import CopyGuard

        return CopyGuard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
