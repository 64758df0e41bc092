"""The word tokenizer: whitespace-separated words, newlines kept as tokens."""

from __future__ import annotations

import re
from collections import Counter
from itertools import repeat
from typing import Any, Iterable

import numpy as np

from lmgen.errors import TokenizerError

from .base import END, UNK, Tokenizer, _check_int

_WORD_RE = re.compile(r"\n|[^\s]+")


class WordTokenizer(Tokenizer):
    """Whitespace-separated words, with ``"\\n"`` a token of its own (paragraphs survive).

    Ids 2.. are the words by decreasing frequency, ties alphabetical. ``"\\n"`` is in the
    vocabulary only if the training text has it (a corpus whose documents are lines,
    such as PTB, turns every newline into ``[END]`` instead). The literal word ``<unk>``
    (PTB has it) is ``<unk>`` itself, id 1; the literal word ``[END]`` encodes to ``<unk>``,
    since only the data pipeline may end a document. ``decode`` joins words with one
    space and renders ``<unk>`` as the word ``<unk>``.

    >>> from lmgen.tokenizer import build_tokenizer
    >>> tok = build_tokenizer("word", ["the cat\\nthe  <unk> sat"])
    >>> tok.pieces
    ['[END]', '<unk>', 'the', '\\n', 'cat', 'sat']
    >>> tok.decode(tok.encode("the dog\\n  sat "))
    'the <unk>\\nsat'
    """

    kind = "word"

    def __init__(self, pieces: list[str], options: dict[str, Any]):
        super().__init__(pieces, options)
        self._ids = {w: i for i, w in enumerate(pieces)}
        del self._ids[END]  # the word "[END]" in a text is not a document break
        assert len(self._ids) == len(pieces) - 1, "duplicate words in the vocabulary"

    @classmethod
    def _build(
        cls, texts: Iterable[str], *, max_vocab: int | None = None, min_count: int = 1
    ) -> WordTokenizer:
        if max_vocab is not None:
            _check_int("max_vocab", max_vocab, 2)
        _check_int("min_count", min_count, 1)
        counts: Counter[str] = Counter()
        for chunk in texts:
            counts.update(_WORD_RE.findall(chunk))
        if not counts:
            raise TokenizerError("cannot build a word tokenizer from empty text; check the corpus")
        del counts[UNK], counts[END]
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            words = words[: max_vocab - 2]
        return cls([END, UNK] + words, {"max_vocab": max_vocab, "min_count": min_count})

    def encode_array(self, text: str) -> np.ndarray:
        words = _WORD_RE.findall(text)
        ids = map(self._ids.get, words, repeat(self.unk_id))
        return np.fromiter(ids, dtype=np.int64, count=len(words))

    def count_unknown(self, text: str) -> int:
        return sum(w not in self._ids for w in _WORD_RE.findall(text))

    def unknown_symbols(self, text: str, limit: int = 20) -> list[str]:
        unknown = dict.fromkeys(w for w in _WORD_RE.findall(text) if w not in self._ids)
        return list(unknown)[:limit]

    def _decode_document(self, ids: np.ndarray) -> str:
        text = " ".join([self.pieces[i] for i in ids.tolist()])
        return text.replace(" \n", "\n").replace("\n ", "\n")
