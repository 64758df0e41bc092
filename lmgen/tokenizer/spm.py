"""The SentencePiece tokenizer: subword pieces (BPE or unigram) trained on the corpus.

sentencepiece is imported inside functions so that ``lmgen --help`` stays instant.
"""

from __future__ import annotations

import io
import re
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np

from lmgen.errors import TokenizerError

from .base import END, SPM_MODEL_FILE, TOKENIZER_FILE, UNK, Tokenizer, _check_int

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
            if iterator_errors:  # the real failure; spm's own error only echoes it
                raise iterator_errors[0] from None
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
