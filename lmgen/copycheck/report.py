"""How much of a text is copied from the training split (:class:`CopyReport`), and the
texts of a file of samples (:func:`split_samples`).

For every token i of a text, :func:`match_lengths` finds m[i], the length of the longest
training span that ends at i (its "matching statistics"): one walk back in the index,
never longer than m[i-1] + 1 tokens. The longest copied span is the largest m[i]; an
n-gram ending at i occurs in training exactly when m[i] >= n, which gives the share of
the text's n-grams found in training (n = 8 for characters, 4 for words and pieces).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .index import CopyIndex

CHAR_NGRAM, TOKEN_NGRAM = 8, 4
SHOWN_SPAN = 160  # characters of a long span shown in the readable report (its ends)


def ngram_order(tokenizer: Any) -> int:
    """n of the n-gram share: 8 for a char tokenizer, 4 for words and pieces."""
    return CHAR_NGRAM if tokenizer.kind == "char" else TOKEN_NGRAM


def match_lengths(index: CopyIndex, ids: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(m, best): m[i] (int64 [L]) the longest training span ending at token i of ``ids``
    (0 at an ``[END]``: no copy runs through a document boundary); best = (k, i, lo, hi) of
    the first longest one (k = 0 when nothing matches)."""
    ids = np.asarray(ids, dtype=np.int64)
    L = len(ids)
    backwards = ids[::-1].copy()
    m = np.zeros(L, np.int64)
    best = (0, -1, 0, 0)
    previous, boundary = 0, -1  # the last [END] at or before i
    for i in range(L):
        if ids[i] == index.end_id:
            previous, boundary = 0, i
            continue
        K = min(i - boundary, previous + 1)
        k, lo, hi = index.match(backwards[L - 1 - i : L - 1 - i + K], K)
        m[i] = previous = k
        if k > best[0]:
            best = (k, i, lo, hi)
    return m, best


@dataclass
class CopyReport:
    """The originality of one text against a training split.

    Positions count tokens (characters for a char tokenizer) from 0; ``start`` and
    ``train_offset`` are -1 when no token of the text occurs in training.
    """

    tokens: int  # the text's length in tokens
    longest: int  # tokens of the longest span copied verbatim from training
    start: int  # where that span starts in the text
    train_offset: int  # where it starts in the training split's token stream (one occurrence)
    occurrences: int  # how many times it occurs in training
    span: str  # its text
    n: int  # n of the n-grams below
    ngrams: int  # n-grams in the text
    ngrams_in_training: int  # of them, those found in the training split
    unit: str = "tokens"  # "characters" for a char tokenizer

    @property
    def share(self) -> float | None:
        """The share of the text's n-grams that occur in training (None: text shorter than n)."""
        return self.ngrams_in_training / self.ngrams if self.ngrams else None

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), share=self.share)

    def format(self) -> str:
        """Two or three readable lines."""
        u = self.unit
        if self.longest == 0:
            first = f"longest copied span: none (no {u[:-1]} of the text occurs in training)"
        else:
            first = (f"longest copied span: {self.longest:,} {u}, at {self.start:,}-{self.start + self.longest - 1:,} "
                     f"of the text's {self.tokens:,}; in training at {u[:-1]} {self.train_offset:,} "
                     f"({self.occurrences:,} occurrence{'s' if self.occurrences != 1 else ''})")
            first += "\n  " + json.dumps(_shorten(self.span), ensure_ascii=False)
        if self.share is None:
            share = f"{self.n}-grams: none (the text has fewer than {self.n} {u})"
        else:
            share = (f"{self.n}-grams found in training: {self.ngrams_in_training:,} of {self.ngrams:,} "
                     f"({100 * self.share:.1f} %)")
        return f"{first}\n{share}"


def _shorten(text: str) -> str:
    if len(text) <= SHOWN_SPAN:
        return text
    half = SHOWN_SPAN // 2
    return f"{text[:half]} [...] {text[-half:]}"


def copy_report(index: CopyIndex, tokenizer: Any, ids: Sequence[int]) -> CopyReport:
    """The :class:`CopyReport` of a text's token ids (``tokenizer.encode(text)``).

    >>> print(copy_report(training_index(ckpt), tok, tok.encode(text)).format())  # doctest: +SKIP
    """
    n = ngram_order(tokenizer)
    m, (k, end, lo, hi) = match_lengths(index, ids)
    L = len(m)
    ngrams = max(0, L - n + 1)
    found = int(np.count_nonzero(m[n - 1 :] >= n)) if ngrams else 0
    unit = "characters" if tokenizer.kind == "char" else "tokens"
    if k == 0:
        return CopyReport(L, 0, -1, -1, 0, "", n, ngrams, found, unit)
    start = end - k + 1
    span = tokenizer.decode([int(t) for t in ids[start : end + 1]])
    return CopyReport(L, k, start, index.start(lo, k), hi - lo, span, n, ngrams, found, unit)


_HEADER = re.compile(r"^--- (?:sample|beam) \d+ of \d+\b.*---$", re.MULTILINE)


def split_samples(text: str, name: str = "the input") -> list[str]:
    """The samples in a file: what ``lmgen sample`` printed, or wrote with ``--out``.

    - JSON lines (the first non-empty line starts with ``{``): one sample a record, its
      ``prompt`` (if any) followed by its ``text``;
    - ``--- sample N of M ---`` (or ``--- beam N of M: ... ---``) header lines: one sample
      after each header;
    - otherwise: the whole text is one sample.

    One final newline of a sample is dropped (``lmgen sample`` ends each with one).

    >>> split_samples("--- sample 1 of 2 ---\\nabc\\n\\n--- sample 2 of 2 ---\\nde\\n")
    ['abc\\n', 'de']
    """
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("{"):
        return [_record(line, k, name) for k, line in enumerate(lines, 1) if line.strip()]
    heads = list(_HEADER.finditer(text))
    if not heads:
        return [_chomp(text)]
    if text[: heads[0].start()].strip():
        raise ConfigError(f"{name} has text before its first '--- sample N of M ---' line; "
                          "give the output of one `lmgen sample` run, or a plain text")
    ends = [h.start() for h in heads[1:]] + [len(text)]
    # lmgen sample writes one "\n" before each next header, and one after the last sample
    return [_chomp(text[h.end() + 1 : end]) for h, end in zip(heads, ends)]


def _chomp(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def _record(line: str, number: int, name: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not isinstance(
            record.get("prompt", ""), str):
        raise ConfigError(f"{name}, line {number}: not a sample record (a JSON object with a \"text\" string, "
                          "as `lmgen sample --out` writes)")
    return record.get("prompt", "") + record["text"]
