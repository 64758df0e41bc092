"""The :class:`Corpus`: local files, split and streamed as documents.

:func:`~lmgen.corpora.lookup.resolve` makes one from what a user typed (lookup.py).
A Corpus cuts its splits by one of these rules:

    "files"  one file per split                   (ptb.train.txt, ptb.valid.txt, ...)
    "chars"  fractions of the characters of the document stream, in order:
             |<------------- 90% train ------------>|<- 5% valid ->|<- 5% test ->|
             cut at int(n * 0.9), int(n * 0.95): nanoGPT's shakespeare_char rule
    "bytes"  byte ranges of the raw files (enwik8: [0, 90M), [90M, 95M), [95M, 100M))
    "documents"  whole documents, by a seeded draw of the given sizes (your own files
             with --separator line, blank or REGEX; documents.py)
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

from lmgen.errors import CorpusError

from .documents import DOCUMENTS, assign, select, shares
from .reading import Segment, align, check_errors, clip, drop_blank, separator_pattern, sha256_file, stream
from .registry import SEPARATORS, SPLIT_NAMES, SPLIT_RULES, CorpusSpec
from .verify import Verified, check_unchanged, stamp


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
        seed: int = 0,
        drop_blank: bool = False,
    ) -> None:
        check_errors(errors)
        assert split in SPLIT_RULES or split == DOCUMENTS
        assert split != "files" or split_files
        if separator not in SEPARATORS:
            separator_pattern(separator)  # a regular expression: refuse a bad one now, not mid-read
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
        self.seed = seed  # of the "documents" draw; unused by the other rules
        # Documents that are only whitespace are dropped: for the "documents" rule and a regex
        # separator (no registry corpus uses them, so their tokens and cache keys are unchanged).
        self.drop_blank = drop_blank or split == DOCUMENTS or separator not in SEPARATORS
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
        return sum(len(t) for t, _ in self._stream(self._whole()))

    @cached_property
    def _documents_total(self) -> int:
        """Documents of the whole stream (blank ones dropped): a streaming pass, for the "documents" rule."""
        return sum(ends for _, ends in self._stream(self._whole()))

    def _whole(self) -> list[Segment]:
        return [(p, 0, p.stat().st_size) for p in self.paths]

    def _stream(self, segments: list[Segment]) -> Iterator[tuple[str, bool]]:
        pieces = stream(segments, self.separator, self.errors)
        return drop_blank(pieces) if self.drop_blank else pieces

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
        piece of a split always ends a document (a "chars" cut may fall inside one; a
        "documents" split holds whole documents only).
        Raises CorpusError for an unknown or empty split and for bytes that are not UTF-8.
        """
        self._check_split(split)
        if self.split == "files":
            segs = [(p, 0, p.stat().st_size) for p in self.split_files[split]]
            return self._stream(segs)
        if self.split == "bytes":
            segs = self._byte_segments(split)
            if not segs:
                raise CorpusError(f"split {split!r} of corpus {self.name!r} is empty; use a bigger corpus")
            return self._stream(segs)
        if self.split == DOCUMENTS:
            # Counted first (a pass), then the same seeded draw on every pass: see documents.py.
            assert self.fractions is not None
            n = self._documents_total
            labels = assign(n, shares(n, self.fractions, self.name), self.seed)
            return select(self._stream(self._whole()), labels, SPLIT_NAMES.index(split), self.name)
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
        # Keys added only where they apply, so the fingerprints (and token caches) of every
        # corpus read before separators existed stay what they were.
        if self.split == DOCUMENTS:
            rule["seed"] = self.seed
        if self.drop_blank:
            rule["blank documents"] = "dropped"
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
        seed = f" (seed {self.seed})" if self.split == DOCUMENTS else ""
        return f"{self.split} " + "/".join(f"{round(f * 100, 6):g}" for f in self.fractions) + seed

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
