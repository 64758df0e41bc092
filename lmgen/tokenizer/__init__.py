"""Text <-> token ids: characters, words, or SentencePiece pieces.

Every tokenizer shares two special ids, so the rest of lmgen never asks which kind it has::

    0  [END]   ends every document (the data pipeline puts it there; ``encode`` never emits it)
    1  <unk>   a symbol outside the vocabulary

``decode`` turns ``[END]`` into a document break: one ``[END]`` at the very start (the
context a generation starts from) and one at the very end (the end of the last document)
render as nothing, every other ``[END]`` as ``"\\n"``. So ``decode(encode(text)) == text``
whenever every symbol of ``text`` is in the vocabulary (word level: up to whitespace).

A tokenizer is saved as ``tokenizer.json`` (kind, vocabulary, options, format version),
plus ``tokenizer.model`` (the SentencePiece model bytes) for the ``spm`` kind::

    >>> tok = build_tokenizer("char", ["hello world\\n"])
    >>> tok.encode("hello")
    [6, 5, 7, 7, 8]
    >>> tok.decode(tok.encode("hello"))
    'hello'

The package, by job: ``base`` (the shared :class:`Tokenizer`), ``char``, ``word``,
``spm`` (one kind each), ``decoder`` (text as generation streams it) and, here,
:func:`build_tokenizer` and :func:`load_tokenizer`. sentencepiece is imported inside
functions so that ``lmgen --help`` stays instant.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Iterable

from lmgen.errors import TokenizerError

from .base import END, FORMAT, SPM_MODEL_FILE, TOKENIZER_FILE, UNK, UNK_CHAR, Tokenizer
from .char import CharTokenizer
from .decoder import TextDecoder, decode_continuation
from .spm import SentencePieceTokenizer
from .word import WordTokenizer

__all__ = [
    "END", "UNK", "UNK_CHAR", "FORMAT", "TOKENIZER_FILE", "SPM_MODEL_FILE", "KINDS",
    "Tokenizer", "CharTokenizer", "WordTokenizer", "SentencePieceTokenizer",
    "TextDecoder", "decode_continuation", "build_tokenizer", "load_tokenizer", "tokenizer_from_state",
]

KINDS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "spm": SentencePieceTokenizer,
}


def build_tokenizer(kind: str, texts: Iterable[str], **options: Any) -> Tokenizer:
    """Build a vocabulary from training text, streamed as chunks of whole lines.

    Options: ``char``: ``min_count=1``; ``word``: ``max_vocab=None`` (cap on
    ``vocab_size``, specials included), ``min_count=1``; ``spm``: ``vocab_size=8000``,
    ``model_type="unigram"|"bpe"``, ``character_coverage=1.0``, ``byte_fallback=True``,
    ``split_digits=True``, ``input_sentence_size=2_000_000``, ``seed=0``.

    >>> build_tokenizer("word", ["a b b\\n"], max_vocab=3).pieces
    ['[END]', '<unk>', 'b']
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    cls = KINDS[kind]
    valid = [name for name in inspect.signature(cls._build).parameters if name != "texts"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TokenizerError(
            f"unknown option(s) {', '.join(unknown)} for the {kind} tokenizer; valid: {', '.join(valid)}"
        )
    if isinstance(texts, str):  # a lone string would otherwise be iterated by character
        texts = [texts]
    return cls._build(texts, **options)


def load_tokenizer(folder: Path) -> Tokenizer:
    """Read a tokenizer written by ``Tokenizer.save`` (a folder, or its tokenizer.json)."""
    folder = Path(folder)
    path = folder if folder.name == TOKENIZER_FILE and folder.is_file() else folder / TOKENIZER_FILE
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise TokenizerError(f"cannot read {path} ({e.strerror}); is this an lmgen checkpoint folder?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is damaged (not valid JSON: {e}); save the tokenizer again") from None
    return tokenizer_from_state(state, path)


def tokenizer_from_state(state: Any, path: Path) -> Tokenizer:
    """The tokenizer of an already parsed tokenizer.json at ``path`` (checkpoints read it with their caps)."""
    if not isinstance(state, dict) or "format" not in state:
        raise TokenizerError(f"{path} is not an lmgen tokenizer file (no 'format' field)")
    if state["format"] != FORMAT:
        raise TokenizerError(
            f"{path} has format {state['format']!r}, but this lmgen reads {FORMAT!r}; "
            f"use the lmgen version that wrote it, or rebuild the tokenizer"
        )
    kind, pieces, options = state.get("kind"), state.get("vocab"), state.get("options")
    if not isinstance(kind, str) or kind not in KINDS:
        raise TokenizerError(f"{path} names unknown tokenizer kind {kind!r}")
    if (
        not isinstance(pieces, list)
        or not all(isinstance(p, str) for p in pieces)
        or pieces[:2] != [END, UNK]
        or not isinstance(options, dict)
    ):
        raise TokenizerError(f"{path} is damaged: its vocab or options are malformed")
    try:
        return KINDS[kind]._load(pieces, options, path.parent)
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise TokenizerError(f"{path} is damaged: {e!r}") from None
