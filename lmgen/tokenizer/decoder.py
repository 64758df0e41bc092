"""Token ids -> text one token at a time, as generation streams it.

:class:`TextDecoder` gives each new token's text in O(1), equal in the end to
``tokenizer.decode`` of all of them; :func:`decode_continuation` is the same for a
finished list of ids.
"""

from __future__ import annotations

import re
from typing import Sequence

from .base import Tokenizer

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


class TextDecoder:
    """Token ids -> text pieces, one token at a time, in O(1) per token.

    The concatenation of the pieces equals ``tokenizer.decode`` of the ids (char, word
    and SentencePiece tokenizers), continuing a text whose last token was ``previous``:
    a word gets its leading space unless it starts a line or document; SentencePiece
    byte pieces are held back until they form whole UTF-8 characters. ``[END]`` is a
    document break, ``"\\n"``.

    >>> from lmgen.tokenizer import build_tokenizer
    >>> tok = build_tokenizer("word", ["the cat sat"])
    >>> d = TextDecoder(tok)
    >>> [d.push(i) for i in tok.encode("the cat")]
    ['the', ' cat']
    """

    def __init__(self, tokenizer: Tokenizer, previous: int | None = None):
        self.tokenizer = tokenizer
        self.kind = tokenizer.kind
        self.end = tokenizer.end_id
        self.previous = self.end if previous is None else previous
        self._surface: dict[int, str] = {}
        self._bytes: list[int] = []  # spm: byte pieces waiting to form characters
        self._newline = {i for i, p in enumerate(tokenizer.pieces) if p == "\n"} if self.kind == "word" else set()

    def surface(self, token: int) -> str:
        text = self._surface.get(token)
        if text is None:
            text = self._surface[token] = self.tokenizer.decode([token])
        return text

    def push(self, token: int) -> str:
        """The text that ``token`` adds (may be empty: spm bytes of an unfinished character)."""
        previous, self.previous = self.previous, token
        if token == self.end:
            return self.flush() + "\n"
        if self.kind == "word":
            glue = previous == self.end or previous in self._newline or token in self._newline
            return ("" if glue else " ") + self.surface(token)
        if self.kind == "spm" and _BYTE_PIECE.fullmatch(self.tokenizer.pieces[token]):
            self._bytes.append(token)
            try:
                bytes(int(self.tokenizer.pieces[t][3:5], 16) for t in self._bytes).decode("utf-8")
            except UnicodeDecodeError:
                return ""  # wait for the rest of the character
            return self.flush()
        return self.flush() + self.surface(token)

    def flush(self) -> str:
        """Whatever is held back (spm bytes that never completed a character)."""
        if not self._bytes:
            return ""
        text = self.tokenizer.decode(self._bytes)
        self._bytes = []
        return text


def decode_continuation(tokenizer: Tokenizer, ids: Sequence[int], previous: int | None = None) -> str:
    """Text of ``ids`` as it continues a text whose last token is ``previous``."""
    decoder = TextDecoder(tokenizer, previous)
    return "".join(decoder.push(i) for i in ids) + decoder.flush()
