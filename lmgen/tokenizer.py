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

sentencepiece is imported inside functions so that ``lmgen --help`` stays instant.
"""

from __future__ import annotations

import inspect
import io
import json
import re
from collections import Counter
from itertools import chain, repeat
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


def _utf32(text: str) -> np.ndarray:
    """Code points of ``text`` as uint32 (lone surrogates included, as their code)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer(Tokenizer):
    """One token per Unicode code point; ids 2.. are the code points seen, sorted.

    Unseen characters encode to ``<unk>``, which decodes to U+FFFD (one character, so
    character positions are kept). Combining marks and emoji ZWJ sequences are several
    code points, hence several tokens, and round-trip exactly.

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


_WORD_RE = re.compile(r"\n|[^\s]+")


class WordTokenizer(Tokenizer):
    """Whitespace-separated words, with ``"\\n"`` a token of its own (paragraphs survive).

    Ids 2.. are the words by decreasing frequency, ties alphabetical. ``"\\n"`` is in the
    vocabulary only if the training text has it (a corpus whose documents are lines,
    such as PTB, turns every newline into ``[END]`` instead). The literal word ``<unk>``
    (PTB has it) is ``<unk>`` itself, id 1; the literal word ``[END]`` encodes to ``<unk>``,
    since only the data pipeline may end a document. ``decode`` joins words with one
    space and renders ``<unk>`` as the word ``<unk>``.

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


_SPM_NEWLINE = "<nl>"
_SPM_SPACE = "\u2581"  # how SentencePiece writes a space inside a piece
# Text spm cannot encode as itself: a literal "\u2581" would come back as a space, and
# spm strips "<unk>" from text. Lines are cut at these and the pieces put in by hand.
_SPM_LITERALS = re.compile(f"({_SPM_SPACE}|{re.escape(UNK)})")


class SentencePieceTokenizer(Tokenizer):
    """Subword pieces from a SentencePiece model (BPE or unigram) trained on the corpus.

    The spm ids are the lmgen ids: ``[END]`` is spm's pad piece (id 0), ``<unk>`` id 1,
    and a control piece ``<nl>`` (id 2) stands for ``"\\n"``, because SentencePiece models
    one line at a time: ``encode`` encodes each line and puts ``<nl>`` between lines.
    Byte fallback (ids 3..258, ``<0x00>``..``<0xFF>``) spells any character the model has
    not seen as its UTF-8 bytes, so every text round-trips exactly. Spaces are kept as
    they are (no normalisation, no dummy prefix), so indentation survives too. As in
    the word tokenizer, the literal text ``<unk>`` (WikiText has it) is ``<unk>``, id 1.

    >>> tok = build_tokenizer("spm", [open("input.txt").read()], vocab_size=2000)  # doctest: +SKIP
    >>> text = "First Citizen:\\n  Speak, 漢字"
    >>> tok.decode(tok.encode(text)) == text  # doctest: +SKIP
    True
    """

    kind = "spm"
    newline_id: ClassVar[int] = 2

    def __init__(self, model: bytes, options: dict[str, Any]):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"not a valid SentencePiece model ({e})") from None
        self._model = model
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        if pieces[:3] != [END, UNK, _SPM_NEWLINE]:
            raise TokenizerError(
                f"this SentencePiece model was not trained by lmgen: its first pieces are "
                f"{pieces[:3]}, expected {[END, UNK, _SPM_NEWLINE]}"
            )
        super().__init__(pieces, options)
        space_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPM_SPACE.encode()]
        self._literal_ids = {
            _SPM_SPACE: [self.unk_id] if self.unk_id in space_bytes else space_bytes,
            UNK: [self.unk_id],
        }

    def __reduce__(self):  # the spm processor itself does not pickle (data loader workers)
        return (type(self), (self._model, self.options))

    @classmethod
    def _build(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = 8000,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        byte_fallback: bool = True,
        split_digits: bool = True,
        input_sentence_size: int = 2_000_000,
        seed: int = 0,
    ) -> SentencePieceTokenizer:
        import sentencepiece as spm

        _check_int("vocab_size", vocab_size, 4)
        _check_int("input_sentence_size", input_sentence_size, 0)
        _check_int("seed", seed, 0)
        if model_type not in ("bpe", "unigram"):
            raise TokenizerError(f"SentencePiece model_type must be 'bpe' or 'unigram', got {model_type!r}")
        if not isinstance(character_coverage, (int, float)) or not 0 < character_coverage <= 1:
            raise TokenizerError(f"character_coverage must be in (0, 1], got {character_coverage!r}")
        for name, value in (("byte_fallback", byte_fallback), ("split_digits", split_digits)):
            if not isinstance(value, bool):
                raise TokenizerError(f"{name} must be true or false, got {value!r}")
        options = dict(
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback, split_digits=split_digits,
            input_sentence_size=input_sentence_size, seed=seed,
        )  # fmt: skip
        # spm swallows exceptions raised by the iterator (e.g. a CorpusError): keep them
        iterator_errors: list[BaseException] = []

        def lines() -> Iterable[str]:
            try:
                for chunk in texts:
                    for line in chunk.split("\n"):
                        # spm drops "<unk>" from a line, which would glue its neighbours
                        yield from filter(None, line.split(UNK) if UNK in line else [line])
            except BaseException as e:
                iterator_errors.append(e)
                raise

        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(), model_writer=model,
                vocab_size=vocab_size, model_type=model_type,
                character_coverage=character_coverage, byte_fallback=byte_fallback,
                split_digits=split_digits, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,  # runs of spaces (indentation) as one piece
                pad_id=0, pad_piece=END, unk_id=1, unk_piece=UNK, bos_id=-1, eos_id=-1,
                control_symbols=[_SPM_NEWLINE], unk_surface=UNK,
                input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
                max_sentence_length=1 << 14, num_threads=1, minloglevel=2,
            )  # fmt: skip
        except RuntimeError as e:
            if iterator_errors:
                raise iterator_errors[0]
            raise _spm_training_error(str(e), vocab_size) from None
        return cls(model.getvalue(), options)

    def encode_array(self, text: str) -> np.ndarray:
        try:
            per_line = self._encode_lines(text.split("\n"))
        except TypeError:  # spm takes UTF-8 only
            raise TokenizerError(
                "text has lone surrogates (undecodable bytes), which SentencePiece cannot encode; "
                "read the file with errors='replace'"
            ) from None
        with_newlines = chain.from_iterable(chain((self.newline_id,), ids) for ids in per_line)
        count = sum(map(len, per_line)) + len(per_line)
        ids = np.fromiter(with_newlines, dtype=np.int64, count=count)
        return ids[1:]  # no newline before the first line

    def _encode_lines(self, lines: list[str]) -> list[list[int]]:
        """spm ids of each line, with the literals spm cannot encode put in by hand."""
        cut = {i: _SPM_LITERALS.split(line) for i, line in enumerate(lines) if _SPM_SPACE in line or UNK in line}
        ids = self._sp.encode([("" if i in cut else line) for i, line in enumerate(lines)] if cut else lines)
        # one batch for the text between literals: [text, literal, text, ..., literal, text]
        texts = iter(self._sp.encode([text for parts in cut.values() for text in parts[0::2]]))
        for i, parts in cut.items():
            ids[i] = next(texts)
            for literal in parts[1::2]:
                ids[i] += self._literal_ids[literal] + next(texts)
        return ids

    def count_unknown(self, text: str) -> int:
        # a literal "<unk>" is in the vocabulary (it is <unk> itself): not unknown
        return super().count_unknown(text) - text.count(UNK)

    def unknown_symbols(self, text: str, limit: int = 20) -> list[str]:
        # only with byte_fallback=False: otherwise any character is spelled as bytes
        chars = list(dict.fromkeys(text.replace(UNK, "").replace("\n", "")))
        unknown = [c for c, ids in zip(chars, self._encode_lines(chars)) if self.unk_id in ids]
        return unknown[:limit]

    def _decode_document(self, ids: np.ndarray) -> str:
        lines = np.split(ids, np.flatnonzero(ids == self.newline_id))
        lines[1:] = [line[1:] for line in lines[1:]]
        return "\n".join(self._sp.decode([line.tolist() for line in lines]))

    def piece(self, id: int) -> str:
        if id == self.newline_id:
            return "\n"
        return self.pieces[id].replace(_SPM_SPACE, " ")

    def _save_extra(self, folder: Path) -> list[str]:
        (folder / SPM_MODEL_FILE).write_bytes(self._model)
        return [SPM_MODEL_FILE]

    @classmethod
    def _load(cls, pieces: list[str], options: dict[str, Any], folder: Path) -> SentencePieceTokenizer:
        path = folder / SPM_MODEL_FILE
        try:
            model = path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"cannot read {path} ({e.strerror}); it is saved beside {TOKENIZER_FILE}") from None
        try:
            tok = cls(model, options)
        except TokenizerError as e:
            raise TokenizerError(f"{path} is damaged: {e}") from None
        if tok.pieces != pieces:
            raise TokenizerError(f"{path} does not match the vocabulary in {folder / TOKENIZER_FILE}")
        return tok


def _spm_training_error(message: str, vocab_size: int) -> TokenizerError:
    """A SentencePiece training failure, as a message that says what to change."""
    too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return TokenizerError(
            f"SentencePiece vocab size {vocab_size} is too large for this corpus (it yields at "
            f"most {too_high[1]} pieces): lower --spm-vocab to {too_high[1]} or less"
        )
    too_low = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if too_low:
        return TokenizerError(
            f"SentencePiece vocab size {vocab_size} is too small: this corpus needs at least "
            f"{too_low[1]} pieces (characters, 256 byte pieces, specials); raise --spm-vocab"
        )
    if "sentences_.empty()" in message:
        return TokenizerError("cannot train SentencePiece on empty text; check the corpus")
    reason = message.strip().splitlines()[0] if message.strip() else "unknown reason"
    return TokenizerError(f"SentencePiece training failed ({reason}); try a smaller --spm-vocab")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TokenizerError(f"tokenizer option {name} must be an integer >= {minimum}, got {value!r}")


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
    if kind not in KINDS:
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
    if not isinstance(state, dict) or "format" not in state:
        raise TokenizerError(f"{path} is not an lmgen tokenizer file (no 'format' field)")
    if state["format"] != FORMAT:
        raise TokenizerError(
            f"{path} has format {state['format']!r}, but this lmgen reads {FORMAT!r}; "
            f"use the lmgen version that wrote it, or rebuild the tokenizer"
        )
    kind, pieces, options = state.get("kind"), state.get("vocab"), state.get("options")
    if kind not in KINDS:
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
