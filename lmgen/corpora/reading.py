"""Streaming reads: a file's bytes become text pieces, and pieces become documents.

Text is decoded as UTF-8 (a BOM is dropped), CRLF and CR become "\\n", and every file is
read in pieces of at most about ``CHUNK_BYTES`` characters, so a 1 GB file never sits in
memory. :func:`stream` removes the document separator and marks where it was:

    "line"   every line is a document            (PTB: one [END] where the papers count <eos>)
    "blank"  a run of blank lines ends one        (paragraphs)
    "file"   every segment (file) is a document   (a folder of files, python-stdlib)
    "none"   only the last segment ends one       (tinyshakespeare, war-and-peace)
    REGEX    every match ends one, and each segment's end does (a user's --separator)

:func:`clip` cuts a character range out of a stream (a "chars" split); :func:`align`
moves a byte offset to a character start (a "bytes" split).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lmgen.errors import CorpusError

from .registry import SEPARATORS

# How bytes that are not UTF-8 are handled: raise with the offset, or read them as U+FFFD.
ERRORS = ("strict", "replace")

# Pieces of text are at most about this many characters; tests shrink it to find edge cases.
CHUNK_BYTES = 1 << 20

Segment = tuple[Path, int, int]  # a file's bytes [start, end)

# The separator names a user may give; any other --separator is a regular expression.
NAMED_SEPARATORS = ("none", "line", "blank")
# A regex match is accepted once this many characters follow it in memory (or the file ends):
# a match, or a lookahead, reaching further than this could differ from a whole-file search.
REGEX_WINDOW = 1 << 16
# ... and this many characters before the search start stay in memory, so that a lookbehind
# or \b sees the text before it, and ^ (without (?m)) matches only at the start of the file.
REGEX_CONTEXT = 256


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


def separator_pattern(separator: str, what: str = "--separator") -> re.Pattern[str]:
    """Compile a regular-expression separator, refusing one that is invalid or matches "".

    A pattern that matches the empty string would end a document between every two
    characters; ``what`` names the setting in the message.
    """
    try:
        pattern = re.compile(separator)
    except (re.error, RecursionError, OverflowError) as exc:
        raise CorpusError(
            f"{what} must be none, line, blank or a regular expression; {separator!r} is not a valid one ({exc})"
        ) from None
    if pattern.search("") is not None:
        raise CorpusError(
            f"{what} {separator!r} matches the empty string, which would end a document everywhere; "
            f"make it match at least one character, e.g. '\\n\\n+' or '\\n%\\n'"
        )
    return pattern


def _regex_documents(chunks: Iterable[str], pattern: re.Pattern[str]) -> Iterator[tuple[str, bool]]:
    """Cut one segment's text into documents at the pattern's matches (which are removed).

    The segment's end ends the last document, less one final "\\n" (the file's last line
    end, not part of a document). Text is searched in a window that slides along the file
    (see REGEX_WINDOW), so a 1 GB file is never held whole.
    """
    buf, pos = "", 0  # pos: where the current document's unread text starts in buf
    chunks = iter(chunks)
    while True:
        chunk = next(chunks, None)
        done = chunk is None
        if not done:
            buf += chunk
            if len(buf) - pos <= 2 * REGEX_WINDOW:
                continue  # read on: a match is only accepted with REGEX_WINDOW characters after it
        limit = len(buf) if done else len(buf) - REGEX_WINDOW
        while (m := pattern.search(buf, pos)) is not None and (done or m.end() <= limit):
            if m.end() == m.start():
                raise CorpusError(f"--separator {pattern.pattern!r} matched the empty string (after "
                                  f"{buf[max(m.start() - 20, 0):m.start()]!r}); make it match at least one character")
            yield buf[pos : m.start()], True
            pos = m.end()
        if done:
            last = buf[pos:]
            yield (last[:-1] if last.endswith("\n") else last), True
            return
        keep = limit if m is None else min(m.start(), limit)  # text before keep can start no match
        if keep > pos:
            yield buf[pos:keep], False
            pos = keep
        cut = max(pos - REGEX_CONTEXT, 0)
        buf, pos = buf[cut:], pos - cut


def drop_blank(pieces: Iterable[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
    """The pieces less the documents that are empty or only whitespace.

    Whitespace pieces that start a document wait until the document shows text (then they
    are yielded) or ends (then it is dropped): two [END] in a row would teach a model that
    an empty item is a likely one.
    """
    held: list[str] = []
    shown = False  # the current document has shown a non-whitespace character
    for text, ends in pieces:
        if not shown:
            if not text or text.isspace():
                if ends:
                    held = []
                else:
                    held.append(text)
                continue
            shown = True
            for h in held:
                yield h, False
            held = []
        yield text, ends
        if ends:
            shown = False


def stream(segments: Sequence[Segment], separator: str, errors: str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of the segments, the separator removed.

    ``separator`` is one of registry.SEPARATORS or else a regular expression (see
    :func:`separator_pattern`); every segment's end then ends a document.
    """
    if separator not in SEPARATORS:
        pattern = separator_pattern(separator)
        for path, start, end in segments:
            yield from _regex_documents(read_text(path, start, end, errors), pattern)
    elif separator == "line":
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
