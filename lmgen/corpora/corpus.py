"""The :class:`Corpus` (local files, split and streamed as documents) and :func:`resolve`.

:func:`resolve` turns what a user typed into a Corpus:

    None             the built-in default, python-stdlib (no files needed, offline)
    a registry name  its files from the mirror or the cache (see download.py), or fetched;
                     each verified by sha256 against the registry first (verify.py)
    a text file      one document, split 90/5/5 by characters
    a folder         its text files, recursively and sorted, one document each, 90/5/5

A Corpus cuts its splits by one of three rules:

    "files"  one file per split                   (ptb.train.txt, ptb.valid.txt, ...)
    "chars"  fractions of the characters of the document stream, in order:
             |<------------- 90% train ------------>|<- 5% valid ->|<- 5% test ->|
             cut at int(n * 0.9), int(n * 0.95): nanoGPT's shakespeare_char rule
    "bytes"  byte ranges of the raw files (enwik8: [0, 90M), [90M, 95M), [95M, 100M))
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

from lmgen.errors import CorpusError

from .download import fetch, find_local, local_places
from .reading import Segment, align, check_errors, clip, has_text, sha256_file, stream
from .registry import (
    DEFAULT_CORPUS,
    MIRROR_ENV,
    REGISTRY,
    SEPARATORS,
    SPLIT_NAMES,
    SPLIT_RULES,
    STDLIB_CAP_BYTES,
    CorpusSpec,
    did_you_mean,
)
from .verify import Verified, check_unchanged, stamp, verify_file

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
        verified: dict[Path, Verified] | None = None,
    ) -> None:
        check_errors(errors)
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
        # path -> (sha256, stamp) of the content read: the fingerprint's inputs
        self._verified = {Path(p): v for p, v in (verified or {}).items()}

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
        return sum(len(t) for t, _ in stream(self._whole(), self.separator, self.errors))

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
                a = align(p, a) if a > 0 else 0
                b = align(p, b) if b < size else size
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
            return stream(segs, self.separator, self.errors)
        if self.split == "bytes":
            segs = self._byte_segments(split)
            if not segs:
                raise CorpusError(f"split {split!r} of corpus {self.name!r} is empty; use a bigger corpus")
            return stream(segs, self.separator, self.errors)
        total = self._content_chars
        lo, hi = self._bounds(split, total)
        if lo >= hi:
            raise CorpusError(
                f"split {split!r} of corpus {self.name!r} is empty: the corpus has only {total} "
                f"characters; use a bigger corpus (a few thousand characters at least)"
            )
        return clip(stream(self._whole(), self.separator, self.errors), lo, hi, total)

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

        Built from each file's own content hash: for registry files the one :func:`resolve`
        verified against the registry (not re-read), other files are hashed once here.
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
        for p in self.paths:
            if p not in self._verified:
                at = stamp(p)  # taken first: a file written while hashed fails check_unchanged
                self._verified[p] = (sha256_file(p), at)
            h.update(f"\0{p.name}\0{self._verified[p][0]}".encode())
        return h.hexdigest()

    def check_unchanged(self) -> None:
        """Raise CorpusError if a file changed since the fingerprint hashed it.

        One stat per file (a changed one is hashed again): the token caches call this
        before keeping what they encoded, so they never store text their key does not name.
        """
        check_unchanged(self.name, {p: self._verified[p] for p in self.paths if p in self._verified})

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
    check_errors(errors)
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
    hint = did_you_mean(text)
    raise CorpusError(
        f"unknown corpus {text!r}: not a registered name and no such file or folder.{hint} "
        f"Known corpora: {known}; or give the path of a text file or folder."
    )


def _resolve_named(spec: CorpusSpec, *, mirror, download: bool, errors: str) -> Corpus:
    if spec.builtin:
        return _builtin_corpus(spec, errors)
    places = local_places(mirror)
    found = find_local(spec, places)
    if found is not None:
        location, folder = found
        return _named_corpus(spec, folder, location, errors)
    if download:
        folder = fetch(spec, mirror=mirror)
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
    """The corpus in ``folder``, every file verified by size and sha256 (see verify.py)."""
    paths = [folder / f.name for f in spec.files]
    verified = {p: verify_file(spec, f, p, location) for f, p in zip(spec.files, paths)}
    split_files = None
    if spec.split == "files":
        assert spec.split_files is not None
        split_files = {s: [folder / spec.split_files[s]] for s in SPLIT_NAMES if s in spec.split_files}
    return _spec_corpus(spec, paths, location, errors, split_files, verified)


def _spec_corpus(
    spec: CorpusSpec, paths: list[Path], location: str, errors: str, split_files: dict | None = None,
    verified: dict[Path, Verified] | None = None,
) -> Corpus:
    """A Corpus over ``paths`` that splits, separates and describes itself as ``spec`` says."""
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
        verified=verified,
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
    return _spec_corpus(spec, paths, "builtin", errors)


def _resolve_file(path: Path, errors: str) -> Corpus:
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty; give a text file with some text in it")
    if not has_text([path], errors):
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
    if not has_text(paths, errors):
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
