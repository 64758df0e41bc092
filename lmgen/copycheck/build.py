"""The suffix array of a token file read backwards, built in bounded memory (numpy only).

Entry ``e`` (1 <= e <= n) stands for the prefix ``T[:e]`` of the token stream ``T`` read
backwards: ``T[e-1], T[e-2], ..., T[0]``. The array lists the n entries sorted by that
backward reading, a reading that runs out first sorting first::

    T = a b a b        e  read backwards        sorted:  e = 1  a
                       1  a                              e = 3  a b a
                       2  b a                            e = 2  b a
                       3  a b a                          e = 4  b a b a
                       4  b a b a

It is the suffix array of the reversed stream, so every entry whose last k tokens equal a
pattern sits in one run, which narrows token by token from the pattern's newest token
back: "does the text so far end with a training span, and what came next there?" is one
walk, where a forward suffix array needs a search per starting point.

How it is sorted: a key packs the next ``per`` tokens of the backward reading (each as
id + 1 in ``bits`` bits; 0 is "before the start") into one uint64, so comparing keys
depth by depth compares readings. A block of at most ``M`` entries is sorted in memory
(:func:`_sort_block`): argsort by the depth-0 key, then only the entries still tied go on
to the next depth, sorted within their group. A larger set is cut into buckets
by key ranges chosen from a sample, each bucket written to a file of positions, and each
bucket sorted in turn (a bucket whose entries all share one key goes one depth further).
Tokens are read through ``np.memmap`` windows that are dropped after use, so neither the
token file nor the array is ever resident whole: memory stays near ``memory`` bytes plus
one window whatever the corpus size. A text with very long repeats needs one round per ``per``
tokens of the repeat (about 1,000 rounds for 10,000 repeated characters).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

DEFAULT_MEMORY = 256 << 20  # bytes the sorting of a block may hold; the mapped window adds a quarter
BYTES_PER_ENTRY = 80  # what sorting one entry of a block holds at its peak (77 measured with tracemalloc)
MAX_BUCKETS = 256  # files written at once when a set of entries is cut into buckets
SAMPLE_PER_BUCKET = 64  # sampled keys per wanted bucket, to place the cuts
PAIR_VOCAB = 1024  # up to this vocabulary, where each pair of newest tokens starts is tabled too (8 MB at most)


def key_layout(vocab_size: int) -> tuple[int, int]:
    """(bits per token, tokens per uint64 key): id + 1 must fit, 0 stands for "before the start".

    >>> key_layout(65), key_layout(65536)
    ((7, 9), (17, 3))
    """
    bits = int(vocab_size).bit_length()
    return bits, max(1, 64 // bits)


def entry_dtype(n: int) -> np.dtype:
    """uint32 entries while they fit, else uint64."""
    return np.dtype(np.uint32) if n < 2**32 else np.dtype(np.uint64)


class _Tokens:
    """Packed keys of entries, reading the token file one mapped window at a time.

    A small file is read once into memory; a large one is mapped window by window (each
    unmapped when done), so the resident part of it never exceeds one window.
    """

    def __init__(self, path: Path, dtype: np.dtype, n: int, vocab_size: int, window: int):
        self.path, self.dtype, self.n, self.window = Path(path), np.dtype(dtype), n, max(1, window)
        self.bits, self.per = key_layout(vocab_size)
        self.whole = np.fromfile(self.path, self.dtype, count=n) if n <= self.window else None

    def keys(self, pos: np.ndarray, depth: int) -> np.ndarray:
        """uint64 keys at ``depth`` of the entries ``pos`` (int64, ascending)."""
        out = np.zeros(len(pos), np.uint64)
        near = depth * self.per + 1  # the first token read is T[e - near], the last T[e - near - per + 1]
        far = near + self.per - 1
        if self.whole is not None:
            self._pack(out, pos, self.whole, 0, near)
            return out
        for a in range(0, self.n + 1, self.window):
            i, j = np.searchsorted(pos, [a, a + self.window])
            if i == j:
                continue
            lo, hi = max(0, a - far), min(self.n, a + self.window - near)
            if lo >= hi:
                continue  # every token these entries would read lies before the start: keys 0
            chunk = np.memmap(self.path, self.dtype, mode="r", offset=lo * self.dtype.itemsize, shape=(hi - lo,))
            self._pack(out[i:j], pos[i:j], chunk, lo, near)  # a view: packed in place
            del chunk  # unmapped: its pages leave this process
        return out

    def keys_any(self, pos: np.ndarray, depth: int) -> np.ndarray:
        """:meth:`keys` of entries in any order (read in ascending order, returned in theirs)."""
        order = np.argsort(pos)  # distinct values: no need of a (3x slower) stable sort
        out = np.empty(len(pos), np.uint64)
        out[order] = self.keys(pos[order], depth)
        return out

    def _pack(self, out: np.ndarray, pos: np.ndarray, chunk: np.ndarray, base: int, near: int) -> None:
        shift, one = np.uint64(self.bits), np.uint64(1)
        for j in range(self.per):
            at = pos - (near + j) - base  # into chunk; < -base: before the start
            before = int(np.searchsorted(at, -base))  # pos ascending: those come first
            value = chunk[np.maximum(at, 0)].astype(np.uint64)
            value += one
            value[:before] = 0
            out <<= shift
            out |= value


def _split_ties(slots: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of entries at ``slots`` (ascending; groups ``labels``, keys sorted within each group):
    those still tied with another, and their new group labels."""
    start = np.ones(len(slots), bool)
    start[1:] = (labels[1:] != labels[:-1]) | (keys[1:] != keys[:-1])
    new = np.cumsum(start) - 1
    tied = np.bincount(new)[new] > 1
    return slots[tied], new[tied]


def _sort_block(tokens: _Tokens, pos: np.ndarray, depth: int) -> np.ndarray:
    """Entries ``pos`` (int64, ascending) that agree on every key before ``depth``, sorted."""
    keys = tokens.keys(pos, depth)
    order = np.argsort(keys)  # unstable is fine: ties are sorted by the next depths
    pos, keys = pos[order], keys[order]
    del order
    slots, labels = _split_ties(np.arange(len(pos)), np.zeros(len(pos), np.int64), keys)
    del keys
    while len(slots):  # the tied entries only, one depth further each round
        depth += 1
        sub = pos[slots]
        keys = tokens.keys_any(sub, depth)
        # by (group, key) in one uint64 argsort, ~3x faster than np.lexsort: the key's rank
        # among these keys in the low half (groups keep their slots: labels come sorted)
        rank = np.unique(keys, return_inverse=True)[1].astype(np.uint64)
        order = np.argsort((labels.astype(np.uint64) << np.uint64(32)) | rank)
        pos[slots] = sub[order]
        slots, labels = _split_ties(slots, labels[order], keys[order])
    return pos


Source = Callable[[], Iterator[np.ndarray]]


def _ranges(lo: int, hi: int, size: int) -> Source:
    return lambda: (np.arange(a, min(a + size, hi), dtype=np.int64) for a in range(lo, hi, size))


def _file(path: Path, dtype: np.dtype, size: int) -> Source:
    def read() -> Iterator[np.ndarray]:
        with open(path, "rb") as f:
            while True:
                chunk = np.fromfile(f, dtype, count=size)
                if not len(chunk):
                    return
                yield chunk.astype(np.int64)
    return read


def _cuts(tokens: _Tokens, source: Source, count: int, depth: int, block: int,
          bounds: tuple[int, int] | None) -> np.ndarray:
    """Sorted uint64 keys that cut a set of ``count`` entries into buckets of ~block/2.

    Quantiles of a sample; with the set's key ``bounds`` known (lowest != highest), their
    midpoint too, so the set is always cut in two at least (the sample alone may miss).
    """
    want = min(MAX_BUCKETS, 2 * math.ceil(count / block))
    step = max(1, count // (want * SAMPLE_PER_BUCKET))
    sample = np.concatenate([chunk[::step].copy() for chunk in source()])  # a view would keep its chunk
    keys = np.sort(tokens.keys(sample, depth))
    cuts = keys[(np.arange(1, want) * len(keys)) // want]
    if bounds is not None:
        low, high = bounds
        cuts = np.append(cuts, np.uint64(low + (high - low) // 2 + 1))
    return np.unique(cuts)


def build_suffix_array(tokens_path: str | Path, dtype: np.dtype | str, n: int, vocab_size: int, out_path: str | Path,
                       *, memory: int = DEFAULT_MEMORY, window: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """Write the entries 1..n sorted by backward reading to ``out_path`` (raw :func:`entry_dtype`);
    -> ``(first, pairs)``: the entries whose newest token is v are ``first[v]:first[v+1]``
    (int64 [V + 1]); those whose two newest are v then w, ``pairs[v, w]:pairs[v, w+1]``
    (int64 [V, V + 1]; None above :data:`PAIR_VOCAB`). They save the walk its first steps.

    ``memory`` bounds what sorting a block holds; ``window`` (tokens mapped at once) defaults
    to a quarter of it in bytes. Temporary bucket files go next to ``out_path``.

    >>> import numpy as np, tempfile, pathlib                                   # doctest: +SKIP
    >>> np.array([0, 1, 0, 1], np.uint16).tofile("t.bin")                       # doctest: +SKIP
    >>> _ = build_suffix_array("t.bin", "uint16", 4, 2, "t.sa"); np.fromfile("t.sa", np.uint32)  # doctest: +SKIP
    array([1, 3, 2, 4], dtype=uint32)
    """
    dtype, out_path = np.dtype(dtype), Path(out_path)
    block = max(8, memory // BYTES_PER_ENTRY)  # entries sorted in memory at once
    tokens = _Tokens(Path(tokens_path), dtype, n, vocab_size, window or max(1 << 16, memory // 4 // dtype.itemsize))
    counts = np.zeros(vocab_size, np.int64)
    pair_counts = np.zeros(vocab_size * vocab_size, np.int64) if vocab_size <= PAIR_VOCAB else None
    for a in range(0, n, block):  # the tables: a count of every token, and of every pair
        lo = max(0, a - 1)  # the token before the chunk: the pair that straddles it
        chunk = _read(tokens, lo, min(n, a + block)).astype(np.int64)
        counts += np.bincount(chunk[a - lo :], minlength=vocab_size)
        if pair_counts is not None:  # (T[i+1], T[i]): an entry's newest token, then the one before
            pair_counts += np.bincount(chunk[1:] * vocab_size + chunk[:-1], minlength=vocab_size * vocab_size)
    with open(out_path, "wb") as out, tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".sa-") as tmp:
        # A stack of sets still to sort, the next one on top: (source, count, depth, key bounds, its file).
        stack: list[tuple[Source, int, int, tuple[int, int] | None, Path | None]] = [
            (_ranges(1, n + 1, block), n, 0, None, None)]
        made = 0
        while stack:
            source, count, depth, bounds, path = stack.pop()
            if count <= block:
                pos = np.concatenate(list(source())) if count else np.zeros(0, np.int64)
                out.write(_sort_block(tokens, pos, depth).astype(entry_dtype(n)).tobytes())
            else:
                cuts = _cuts(tokens, source, count, depth, block, bounds)
                buckets = _distribute(tokens, source, depth, cuts, Path(tmp) / f"{made}", entry_dtype(n))
                made += 1
                for bucket_path, size, low, high in reversed(buckets):
                    same = low == high  # one key: the next depth tells them apart
                    stack.append((_file(bucket_path, entry_dtype(n), block), size, depth + 1 if same else depth,
                                  None if same else (low, high), bucket_path))
            if path is not None:
                path.unlink()
    first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if pair_counts is None:
        return first, None
    # Entry 1 (T[0] alone, then the start) comes first among those whose newest token is T[0].
    starts = first[:-1] + (np.arange(vocab_size) == (_token(tokens, 0) if n else -1))
    pairs = starts[:, None] + np.concatenate([np.zeros((vocab_size, 1), np.int64),
                                              np.cumsum(pair_counts.reshape(vocab_size, vocab_size), axis=1)], axis=1)
    assert (pairs[:, -1] == first[1:]).all()
    return first, pairs


def _token(tokens: _Tokens, i: int) -> int:
    return int(_read(tokens, i, i + 1)[0])


def _read(tokens: _Tokens, lo: int, hi: int) -> np.ndarray:
    if tokens.whole is not None:
        return tokens.whole[lo:hi]
    return np.fromfile(tokens.path, tokens.dtype, count=hi - lo, offset=lo * tokens.dtype.itemsize)


def _distribute(tokens: _Tokens, source: Source, depth: int, cuts: np.ndarray, stem: Path,
                dtype: np.dtype) -> list[tuple[Path, int, int, int]]:
    """Write each entry of ``source`` to the file of its key's bucket (in ascending order,
    as they came) -> per non-empty bucket, in key order: (file, count, lowest, highest key)."""
    paths = [stem.with_name(f"{stem.name}-{i}.pos") for i in range(len(cuts) + 1)]
    files: dict[int, object] = {}
    sizes = np.zeros(len(paths), np.int64)
    low = np.full(len(paths), np.iinfo(np.uint64).max, np.uint64)
    high = np.zeros(len(paths), np.uint64)
    try:
        for chunk in source():
            keys = tokens.keys(chunk, depth)
            bucket = np.searchsorted(cuts, keys, side="right").astype(np.uint16)  # <= MAX_BUCKETS
            order = np.argsort(bucket, kind="stable")  # a radix sort: positions stay ascending in a bucket
            edges = np.searchsorted(bucket[order], np.arange(len(paths) + 1))
            for b in np.flatnonzero(np.diff(edges)):
                take = order[edges[b]:edges[b + 1]]
                if b not in files:
                    files[b] = open(paths[b], "wb")
                files[b].write(chunk[take].astype(dtype).tobytes())  # type: ignore[attr-defined]
                sizes[b] += len(take)
                low[b] = min(low[b], keys[take].min())
                high[b] = max(high[b], keys[take].max())
    finally:
        for f in files.values():
            f.close()  # type: ignore[attr-defined]
    return [(paths[b], int(sizes[b]), int(low[b]), int(high[b])) for b in range(len(paths)) if sizes[b]]
