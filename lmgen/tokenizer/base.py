"""What every tokenizer shares: the special ids, decoding documents, saving.

:class:`Tokenizer` is the base class of the char, word and SentencePiece tokenizers
(:mod:`.char`, :mod:`.word`, :mod:`.spm`); it holds the vocabulary and implements
everything that does not depend on how text is split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np

from lmgen.errors import TokenizerError

END = "[END]"
UNK = "<unk>"
TOKENIZER_FILE = "tokenizer.json"
SPM_MODEL_FILE = "tokenizer.model"
FORMAT = "lmgen-tokenizer/1"

# How a char tokenizer decodes <unk>: one character, so positions stay aligned with the
# text in visualisations. Word and spm tokenizers decode it as the literal "<unk>", which
# PTB and WikiText use for rare words and which they encode back to <unk>.
UNK_CHAR = "\ufffd"


class Tokenizer:
    """Base class: a vocabulary ``pieces`` (id -> string) with ``[END]`` = 0, ``<unk>`` = 1.

    Subclasses implement ``encode_array`` and ``_decode_document``; everything else
    (``encode``, ``decode``, ``piece``, ``count_unknown``, ``save``) is shared.
    """

    kind: ClassVar[str]
    end_id: ClassVar[int] = 0
    unk_id: ClassVar[int] = 1

    def __init__(self, pieces: list[str], options: dict[str, Any]):
        assert pieces[:2] == [END, UNK], pieces[:2]
        self.pieces = pieces
        self.options = options

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, options={self.options})"

    # -- encoding ------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no ``[END]`` is added; unknown symbols become ``unk_id``."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Same ids as ``encode`` as an int64 array: the fast path for whole corpora."""
        raise NotImplementedError

    def count_unknown(self, text: str) -> int:
        """How many symbols of ``text`` are outside the vocabulary (each became ``<unk>``)."""
        return int(np.count_nonzero(self.encode_array(text) == self.unk_id))

    def unknown_symbols(self, text: str, limit: int = 20) -> list[str]:
        """The distinct symbols of ``text`` outside the vocabulary, in order of first
        appearance, at most ``limit`` of them (for error messages)."""
        raise NotImplementedError

    # -- decoding ------------------------------------------------------------------

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids``: the inverse of ``encode``; ``[END]`` separates documents.

        A leading and a trailing ``[END]`` render as nothing, any other as ``"\\n"``.
        """
        if not hasattr(ids, "__len__"):  # a generator
            ids = list(ids)
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise TokenizerError(
                f"token id {bad} is outside this {self.kind} tokenizer's vocabulary "
                f"(size {self.vocab_size}); the model and tokenizer do not belong together"
            )
        if ids.size and ids[0] == self.end_id:
            ids = ids[1:]
        if ids.size and ids[-1] == self.end_id:
            ids = ids[:-1]
        ends = np.flatnonzero(ids == self.end_id)
        documents = np.split(ids, ends)
        documents[1:] = [d[1:] for d in documents[1:]]  # drop the [END] each split starts with
        return "\n".join(self._decode_document(d) for d in documents)

    def _decode_document(self, ids: np.ndarray) -> str:
        """Text of ids that contain no ``[END]``."""
        raise NotImplementedError

    def piece(self, id: int) -> str:
        """Human-readable form of one token, e.g. ``"[END]"``, ``"<unk>"``, ``" the"``, ``"\\n"``."""
        return self.pieces[id]

    # -- persistence ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Small summary for ``config.json``."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "options": dict(self.options)}

    def save(self, folder: Path) -> list[str]:
        """Write ``tokenizer.json`` (and extra files of the kind) into ``folder``;
        returns the file names written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "kind": self.kind, "options": self.options, "vocab": self.pieces}
        try:
            data = json.dumps(state, ensure_ascii=False, indent=1).encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates in a char vocabulary: escape them
            data = json.dumps(state, ensure_ascii=True, indent=1).encode("ascii")
        (folder / TOKENIZER_FILE).write_bytes(data)
        return [TOKENIZER_FILE] + self._save_extra(folder)

    def _save_extra(self, folder: Path) -> list[str]:
        return []

    @classmethod
    def _build(cls, texts: Iterable[str], **options: Any) -> Tokenizer:
        raise NotImplementedError

    @classmethod
    def _load(cls, pieces: list[str], options: dict[str, Any], folder: Path) -> Tokenizer:
        return cls(pieces, options)



def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TokenizerError(f"tokenizer option {name} must be an integer >= {minimum}, got {value!r}")
