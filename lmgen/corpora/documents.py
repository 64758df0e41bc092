"""Your own text as documents: which files of a folder are text, and whole documents to splits.

A text file or folder given with ``--separator line|blank|REGEX`` is a stream of
documents (reading.py cuts it; documents that are only whitespace are dropped), and
whole documents, never a part of one, go to train, valid and test:

    n documents --> valid = round(n * valid_fraction), at least 1 when the fraction is > 0
                    test  = round(n * test_fraction),  the same
                    train = the rest (at least 1)

Which ones is a seeded draw, made afresh and identically on every pass over the file:
selection sampling (Knuth, TAOCP vol. 2, 3.4.2, Algorithm S) with two kinds to select.
Document i of n goes to valid with probability (valid still to place) / (n - i), else to
test with probability (test still to place) / (n - i), else to train. So every set of
documents of the right sizes is equally likely, the counts are exact, and the draw needs
O(1) memory: one ``random.Random(seed)`` and the counts, read in file order.

    >>> list(assign(5, (3, 1, 1), seed=0))
    [0, 0, 2, 1, 0]
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterable, Iterator

from lmgen.errors import CorpusError

# The split rule of a user's file or folder read with a separator other than "none".
DOCUMENTS = "documents"

# A user folder: files whose first 8 KiB hold a NUL byte are binary and skipped ...
SNIFF_BYTES = 8192
# ... and so are files with these suffixes, without reading them.
BINARY_SUFFIXES = frozenset(
    """.png .jpg .jpeg .gif .bmp .ico .webp .tif .tiff .svgz .pdf .zip .gz .tgz .bz2 .xz
    .zst .7z .rar .tar .whl .egg .jar .class .pyc .pyo .pyd .so .dll .dylib .exe .o .a
    .lib .bin .dat .npy .npz .pt .pth .ckpt .safetensors .onnx .pkl .pickle .h5 .hdf5
    .parquet .arrow .feather .sqlite .db .mp3 .wav .flac .ogg .mp4 .mkv .avi .mov .webm
    .woff .woff2 .ttf .otf .eot .model .memmap""".split()
)


def is_binary(path: Path) -> bool:
    """A file to skip in a folder: a binary suffix, or a NUL byte in its first 8 KiB."""
    if path.suffix.lower() in BINARY_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return b"\0" in f.read(SNIFF_BYTES)


def text_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(text files, skipped files) under ``root``: recursive, sorted by relative path.

    Hidden files and folders are ignored; empty, binary and non-regular files are skipped.
    """
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                p = Path(dirpath) / name
                found.append((p.relative_to(root).as_posix(), p))
    found.sort()
    paths, skipped = [], []
    for _, p in found:
        if not p.is_file() or p.stat().st_size == 0 or is_binary(p):
            skipped.append(p)
        else:
            paths.append(p)
    return paths, skipped


def check_fractions(valid: float, test: float) -> None:
    """Refuse fractions outside [0, 1) or that leave nothing to train on."""
    for name, value in (("--valid-fraction", valid), ("--test-fraction", test)):
        if not 0.0 <= value < 1.0:
            raise CorpusError(f"{name} must be in [0, 1), got {value!r}")
    if valid + test >= 1.0:
        raise CorpusError(f"--valid-fraction + --test-fraction must be < 1 (the rest trains), got {valid} + {test}")


def shares(n: int, fractions: tuple[float, float, float], name: str) -> tuple[int, int, int]:
    """Documents per split (train, valid, test) of ``n``: each within one document of n x fraction."""
    def share(f: float) -> int:
        return 0 if f == 0 else max(1, int(n * f + 0.5))

    valid, test = share(fractions[1]), share(fractions[2])
    if n - valid - test < 1:
        raise CorpusError(
            f"corpus {name!r} has {n} document(s) (empty ones dropped): too few for a training split beside "
            f"{valid} validation and {test} test document(s); add documents, check --separator, or set "
            f"--valid-fraction 0 / --test-fraction 0"
        )
    return n - valid - test, valid, test


def assign(n: int, counts: tuple[int, int, int], seed: int) -> Iterator[int]:
    """The split (0 train, 1 valid, 2 test) of each of ``n`` documents, in order: see the module doc."""
    assert sum(counts) == n
    rng = random.Random(seed)
    valid, test = counts[1], counts[2]
    for left in range(n, 0, -1):
        u = rng.random() * left
        if u < valid:
            valid -= 1
            yield 1
        elif u < valid + test:
            test -= 1
            yield 2
        else:
            yield 0


def select(pieces: Iterable[tuple[str, bool]], labels: Iterator[int], want: int,
           name: str) -> Iterator[tuple[str, bool]]:
    """The pieces of the documents whose label (drawn at each document's first piece) is ``want``."""
    label = None
    for text, ends in pieces:
        if label is None:
            label = next(labels, None)
            if label is None:
                raise CorpusError(f"corpus {name!r} holds more documents than when it was counted: "
                                  "a file changed while it was read; run again")
        if label == want:
            yield text, ends
        if ends:
            label = None
