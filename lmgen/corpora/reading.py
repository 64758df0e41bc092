"""Streaming reads: a file's bytes become text pieces, and pieces become documents.

Text is decoded as UTF-8 (a BOM is dropped), CRLF and CR become "\\n", and every file is
read in pieces of at most about ``CHUNK_BYTES`` characters, so a 1 GB file never sits in
memory. :func:`stream` removes the document separator and marks where it was:

    "line"   every line is a document            (PTB: one [END] where the papers count <eos>)
    "blank"  a run of blank lines ends one        (paragraphs)
    "file"   every segment (file) is a document   (a folder of files, python-stdlib)
    "none"   only the last segment ends one       (tinyshakespeare, war-and-peace)

:func:`clip` cuts a character range out of a stream (a "chars" split); :func:`align`
moves a byte offset to a character start (a "bytes" split).
"""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lmgen.errors import CorpusError

# How bytes that are not UTF-8 are handled: raise with the offset, or read them as U+FFFD.
ERRORS = ("strict", "replace")

# Pieces of text are at most about this many characters; tests shrink it to find edge cases.
CHUNK_BYTES = 1 << 20

Segment = tuple[Path, int, int]  # a file's bytes [start, end)


def check_errors(errors: str) -> None:
    """Refuse an ``errors=`` mode other than "strict" or "replace"."""
    if errors not in ERRORS:
        raise CorpusError(f"errors must be one of {ERRORS}, got {errors!r}")


def read_text(path: Path, start: int = 0, end: int | None = None, errors: str = "strict") -> Iterator[str]:
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


def stream(segments: Sequence[Segment], separator: str, errors: str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of the segments, the separator removed."""
    if separator == "line":
        for path, start, end in segments:
            yield from _lines(read_text(path, start, end, errors))
    elif separator == "blank":
        for path, start, end in segments:
            yield from _paragraphs(_lines(read_text(path, start, end, errors)))
    else:
        # "file": every segment ends a document; "none": only the last one does
        last: str | None = None
        for i, (path, start, end) in enumerate(segments):
            for text in read_text(path, start, end, errors):
                if last is not None:
                    yield last, False
                last = text
            if last is not None and (separator == "file" or i == len(segments) - 1):
                yield last, True
                last = None


def clip(pieces: Iterable[tuple[str, bool]], lo: int, hi: int, total: int) -> Iterator[tuple[str, bool]]:
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


def align(path: Path, offset: int) -> int:
    """Move a byte offset forward to the start of a UTF-8 character (past continuation bytes)."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(4)
    skip = 0
    while skip < len(head) and head[skip] & 0xC0 == 0x80:
        skip += 1
    return offset + skip


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def has_text(paths: Iterable[Path], errors: str) -> bool:
    """Whether any file holds a non-whitespace character (stops at the first one)."""
    for p in paths:
        for text in read_text(p, errors=errors):
            if not text.isspace():
                return True
    return False
