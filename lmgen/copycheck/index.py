"""The copy index of a training split (:class:`CopyIndex`): a suffix array of its token
ids read backwards (see :mod:`.build`), cached beside the token file, and the walk that
finds the longest training span a text ends with.

The token file of a split is keyed by the corpus content and the tokenizer
(:func:`lmgen.data.encode_split`), so an index beside it inherits that key: another
corpus or tokenizer has another token file, hence another index. The index also records
the size and mtime of the token file it was built from, and is rebuilt when they differ
(a token file encoded again), or when any of its files is missing or damaged::

    $LMGEN_CACHE/tokens/tinyshakespeare-train-char-<key>.bin        token ids (lmgen.data)
                                                   <key>.sa         entries, uint32 [n]
                                                   <key>.sa-tables.npz  where each newest token
                                                                      (and pair, small vocabularies) starts
                                                   <key>.sa.json    what it was built from (written last)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .build import DEFAULT_MEMORY, build_suffix_array, entry_dtype

INDEX_FORMAT = "lmgen-copyindex/1"
# Up to this many entries, the walk compares a gathered block of several depths at once
# (about SPAN values a block); above it, it bisects one depth at a time in Python.
COLUMN = 512
SPAN = 2048
FOLLOWING_CHUNK = 1 << 20  # entries read at once when listing what followed a frequent span


class CopyIndex:
    """Where a text's spans occur in a training split's token ids.

    ``tokens`` [n] are the split's ids, ``entries`` [n] its suffix array read backwards
    (:mod:`.build`), ``first`` [V + 1] where each newest token's entries start, ``pairs``
    [V, V + 1] (or None) where each pair of newest tokens' entries start. Build or open one
    with :func:`open_index` or :func:`training_index`.

    >>> index = training_index(ckpt)                                   # doctest: +SKIP
    >>> index.match([ids[-1], ids[-2], ids[-3]])   # newest first       # doctest: +SKIP
    (3, 5120, 5131)
    """

    def __init__(self, tokens: np.ndarray, entries: np.ndarray, first: np.ndarray, pairs: np.ndarray | None = None,
                 *, end_id: int = 0, path: Path | None = None, built: bool = False):
        # plain ndarray views: indexing a np.memmap subclass costs twice as much per scalar
        self.tokens = np.asarray(tokens)
        self.entries = np.asarray(entries)
        self.first = np.asarray(first, dtype=np.int64)
        self.pairs = pairs
        assert len(self.tokens) == len(self.entries) == int(self.first[-1])
        self.n = len(self.tokens)
        self.vocab_size = len(self.first) - 1
        self.end_id = end_id
        self.path = path  # the entries' file, None for an index held in memory
        self.built = built  # whether opening it had to build it

    def match(self, pattern: Sequence[int] | np.ndarray, limit: int | None = None) -> tuple[int, int, int]:
        """``(k, lo, hi)``: the longest ``k <= limit`` such that the training split holds
        ``pattern[:k]`` read backwards, i.e. the last k tokens of a text given newest first;
        its occurrences end at ``entries[lo:hi]`` (exclusive ends). ``k = 0``: ``lo, hi = 0, n``.
        """
        pattern = np.asarray(pattern, dtype=np.int64)
        K = len(pattern) if limit is None else min(limit, len(pattern))
        if K <= 0 or self.n == 0:
            return 0, 0, self.n
        t = int(pattern[0])
        if not 0 <= t < self.vocab_size:
            return 0, 0, self.n
        lo, hi = int(self.first[t]), int(self.first[t + 1])
        if lo == hi:
            return 0, 0, self.n
        d = 1  # tokens matched; entries lo..hi-1 all end with them
        if K > 1 and self.pairs is not None:  # the second step from the table too
            u = int(pattern[1])
            if not 0 <= u < self.vocab_size or self.pairs[t, u] == self.pairs[t, u + 1]:
                return 1, lo, hi
            lo, hi, d = int(self.pairs[t, u]), int(self.pairs[t, u + 1]), 2
        while d < K:
            size = hi - lo
            if size <= COLUMN:
                c = min(K - d, max(1, SPAN // size))
                r, a, b = self._block(pattern, d, c, lo, hi)
                if r < c:
                    return d + r, a, b
                lo, hi, d = a, b, d + c
            else:
                t = int(pattern[d])
                a = self._bound(lo, hi, d, t, right=False)
                b = self._bound(a, hi, d, t, right=True)
                if a == b:
                    return d, lo, hi
                lo, hi, d = a, b, d + 1
        return K, lo, hi

    def _block(self, pattern: np.ndarray, d: int, c: int, lo: int, hi: int) -> tuple[int, int, int]:
        """Compare depths d..d+c-1 of entries lo..hi-1 at once -> (r, a, b): r more tokens
        matched (0..c) by entries a..b-1 (all of lo..hi when r = 0)."""
        ends = self.entries[lo:hi].astype(np.int64)
        at = ends[:, None] - 1 - np.arange(d, d + c)  # [S, c] token indices; < 0: before the start
        eq = np.zeros((hi - lo, c + 1), bool)  # a last False column: argmin finds where each match ends
        eq[:, :c] = self.tokens[np.maximum(at, 0)] == pattern[d : d + c]
        if int(ends.min()) <= d + c:  # rare: an entry near the start of the split
            eq[:, :c] &= at >= 0
        run = eq.argmin(axis=1)  # [S] tokens matched from depth d
        r = int(run.max())
        if r == 0:
            return 0, lo, hi
        hit = np.flatnonzero(run == r)  # contiguous: the entries that share the longer reading
        return r, lo + int(hit[0]), lo + int(hit[-1]) + 1

    def _bound(self, lo: int, hi: int, d: int, t: int, right: bool) -> int:
        """The first entry of lo..hi-1 whose token at depth d is >= t (> t when ``right``);
        before the start counts as -1."""
        entries, tokens = self.entries, self.tokens
        while lo < hi:
            mid = (lo + hi) // 2
            at = int(entries[mid]) - 1 - d
            v = int(tokens[at]) if at >= 0 else -1
            if v < t or (right and v == t):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def following(self, lo: int, hi: int) -> np.ndarray:
        """The distinct tokens (int64, sorted) that come next after the occurrences lo..hi-1."""
        if hi - lo <= FOLLOWING_CHUNK:
            ends = self.entries[lo:hi].astype(np.int64)
            return np.unique(self.tokens[ends[ends < self.n]]).astype(np.int64)
        seen = np.zeros(self.vocab_size, bool)
        for a in range(lo, hi, FOLLOWING_CHUNK):
            ends = self.entries[a : min(hi, a + FOLLOWING_CHUNK)].astype(np.int64)
            seen[self.tokens[ends[ends < self.n]]] = True
        return np.flatnonzero(seen).astype(np.int64)

    def start(self, lo: int, k: int) -> int:
        """Where in the training split (a token offset) the occurrence at entry ``lo`` of a
        k-token span starts."""
        return int(self.entries[lo]) - k


def _paths(tokens_path: Path) -> tuple[Path, Path, Path]:
    return (tokens_path.with_suffix(".sa"), tokens_path.with_suffix(".sa-tables.npz"),
            tokens_path.with_suffix(".sa.json"))


def _source(tokens_path: Path) -> list[int]:
    stat = tokens_path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def open_index(tokens_path: str | os.PathLike, tokens: np.ndarray, vocab_size: int, *, end_id: int = 0,
               memory: int = DEFAULT_MEMORY, log: Callable[[str], Any] | None = None) -> CopyIndex:
    """The copy index of the token file ``tokens_path`` (whose ids are ``tokens``): opened
    from beside it, or built there first (``log`` hears about a build).

    >>> split = encode_split(corpus, tokenizer, "train")                  # doctest: +SKIP
    >>> index = open_index(split.path, split.tokens, tokenizer.vocab_size)  # doctest: +SKIP
    """
    tokens_path = Path(tokens_path)
    n = len(tokens)
    sa_path, first_path, meta_path = _paths(tokens_path)
    want = {"format": INDEX_FORMAT, "tokens": n, "vocab_size": int(vocab_size), "entries": entry_dtype(n).name,
            "source": _source(tokens_path)}
    index = _open(want, sa_path, first_path, meta_path, tokens, end_id)
    if index is not None:
        return index
    if log is not None:
        log(f"building the copy index of {n:,} training tokens (once: it is cached beside them)...")
    started = time.perf_counter()
    folder = tokens_path.parent
    fd, tmp_sa = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".sa")
    os.close(fd)
    fd, tmp_first = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        first, pairs = build_suffix_array(tokens_path, tokens.dtype, n, vocab_size, tmp_sa, memory=memory)
        with open(tmp_first, "wb") as f:
            np.savez(f, first=first, **({"pairs": pairs} if pairs is not None else {}))
        os.replace(tmp_sa, sa_path)
        os.replace(tmp_first, first_path)
        # The record goes last: an interrupted build leaves no record, so it is built again.
        fd, tmp_meta = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(want, f)
        os.replace(tmp_meta, meta_path)
    finally:
        for leftover in (tmp_sa, tmp_first):
            if os.path.exists(leftover):
                os.unlink(leftover)
    if log is not None:
        log(f"copy index built in {time.perf_counter() - started:.1f} s: {sa_path}")
    index = _open(want, sa_path, first_path, meta_path, tokens, end_id)
    assert index is not None, "an index just built opens"
    index.built = True
    return index


def _open(want: dict, sa_path: Path, first_path: Path, meta_path: Path, tokens: np.ndarray,
          end_id: int) -> CopyIndex | None:
    """The cached index if every file is there and was built from this token file, else None."""
    try:
        if json.loads(meta_path.read_text()) != want:
            return None
        with np.load(first_path, allow_pickle=False) as tables:
            first = tables["first"]
            pairs = tables["pairs"] if "pairs" in tables.files else None
        dtype = np.dtype(want["entries"])
        n, V = want["tokens"], want["vocab_size"]
        if sa_path.stat().st_size != n * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if first.shape != (V + 1,) or first.dtype != np.int64 or int(first[-1]) != n:
        return None
    if pairs is not None and (pairs.shape != (V, V + 1) or pairs.dtype != np.int64
                              or not (pairs[:, -1] == first[1:]).all()):
        return None
    entries = np.memmap(sa_path, dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    return CopyIndex(tokens, entries, first, pairs, end_id=end_id, path=sa_path)


def index_of_tokens(tokens: np.ndarray, vocab_size: int, folder: str | os.PathLike, *, end_id: int = 0,
                    memory: int = DEFAULT_MEMORY) -> CopyIndex:
    """An index of an array of token ids, written (with the ids) to ``folder``: for tests
    and for texts that are not a corpus split."""
    path = Path(folder) / "tokens.bin"
    np.asarray(tokens).tofile(path)
    mapped = np.memmap(path, tokens.dtype, mode="r", shape=(len(tokens),)) if len(tokens) else tokens[:0]
    return open_index(path, mapped, vocab_size, end_id=end_id, memory=memory)


def training_index(ckpt: Any, corpus: str | None = None, *, log: Callable[[str], Any] | None = None) -> CopyIndex:
    """The copy index of a checkpoint's training split (of ``corpus``, a NAME|PATH, when
    given), encoded and indexed once, then cached."""
    from ..data import encode_split
    from ..report import checkpoint_corpus

    source = checkpoint_corpus(ckpt, corpus)
    trained_on = (ckpt.config.get("corpus") or {}).get("fingerprint")
    if log is not None and trained_on not in (None, source.fingerprint):
        log(f"warning: corpus {source.name!r} has changed since the checkpoint was trained; "
            "checking against its training split as it is now")
    split = encode_split(source, ckpt.tokenizer, "train")
    return open_index(split.path, split.tokens, ckpt.tokenizer.vocab_size, end_id=ckpt.tokenizer.end_id, log=log)
