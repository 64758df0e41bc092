"""The character tokenizer: one token per Unicode code point."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np

from lmgen.errors import TokenizerError

from .base import END, UNK, UNK_CHAR, Tokenizer, _check_int


def _utf32(text: str) -> np.ndarray:
    """Code points of ``text`` as uint32 (lone surrogates included, as their code)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer(Tokenizer):
    """One token per Unicode code point; ids 2.. are the code points seen, sorted.

    Unseen characters encode to ``<unk>``, which decodes to U+FFFD (one character, so
    character positions are kept). Combining marks and emoji ZWJ sequences are several
    code points, hence several tokens, and round-trip exactly.

    >>> from lmgen.tokenizer import build_tokenizer
    >>> tok = build_tokenizer("char", ["ab\\n", "ba"])
    >>> tok.pieces
    ['[END]', '<unk>', '\\n', 'a', 'b']
    >>> tok.encode("abc"), tok.decode([3, 4, 1])
    ([3, 4, 1], 'ab\\ufffd')
    """

    kind = "char"

    def __init__(self, pieces: list[str], options: dict[str, Any]):
        super().__init__(pieces, options)
        self._codepoints = np.array([ord(c) for c in pieces[2:]], dtype=np.uint32)
        assert np.all(np.diff(self._codepoints.astype(np.int64)) > 0), "char vocabulary must be sorted"
        # id -> code point; [END] never reaches this table, <unk> renders as U+FFFD
        self._id_to_cp = np.concatenate([[0, ord(UNK_CHAR)], self._codepoints]).astype("<u4")

    @classmethod
    def _build(cls, texts: Iterable[str], *, min_count: int = 1) -> CharTokenizer:
        _check_int("min_count", min_count, 1)
        counts: Counter[int] = Counter()
        for chunk in texts:
            cps, n = np.unique(_utf32(chunk), return_counts=True)
            counts.update(dict(zip(cps.tolist(), n.tolist())))
        if not counts:
            raise TokenizerError("cannot build a char tokenizer from empty text; check the corpus")
        kept = sorted(cp for cp, n in counts.items() if n >= min_count)
        return cls([END, UNK] + [chr(cp) for cp in kept], {"min_count": min_count})

    def _known(self, cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into the sorted code point table, whether that entry is the code point)."""
        if not len(self._codepoints):
            return np.zeros(len(cps), np.int64), np.zeros(len(cps), bool)
        index = np.searchsorted(self._codepoints, cps)
        np.minimum(index, len(self._codepoints) - 1, out=index)
        return index, self._codepoints[index] == cps

    def encode_array(self, text: str) -> np.ndarray:
        index, known = self._known(_utf32(text))
        return np.where(known, index + 2, self.unk_id).astype(np.int64)

    def unknown_symbols(self, text: str, limit: int = 20) -> list[str]:
        cps = _utf32(text)
        unknown = cps[~self._known(cps)[1]]
        distinct, first = np.unique(unknown, return_index=True)
        return [chr(cp) for cp in distinct[np.argsort(first)][:limit].tolist()]

    def _decode_document(self, ids: np.ndarray) -> str:
        return self._id_to_cp[ids].tobytes().decode("utf-32-le", "surrogatepass")
