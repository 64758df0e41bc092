"""Tokenizers: exact round trips on hard Unicode, real-corpus vocabularies, save/load."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import pickle
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgen.errors import TokenizerError
from lmgen.tokenizer import (
    END,
    TOKENIZER_FILE,
    UNK,
    CharTokenizer,
    SentencePieceTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)

# the shared mirror, as the test runner (.ci) sets it; beside the checkout by default
CORPORA = Path(os.environ.get("LMGEN_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))
SHAKESPEARE = CORPORA / "tinyshakespeare" / "input.txt"
PTB_TRAIN = CORPORA / "ptb" / "ptb.train.txt"
WIKITEXT_TRAIN = CORPORA / "wikitext-2" / "train.txt"

# Accents, CJK, emoji with a ZWJ sequence and a skin tone, a combining mark, RTL scripts,
# tabs, runs of spaces and of newlines.
HARD = (
    "café naïve résumé\n"
    "漢字 と 日本語 のテキスト\n"
    "👩\u200d💻 codes, 👍🏽 ok 🇫🇷\n"
    "e\u0301 is not é\n"
    "שלום עולם ‏مرحبا بالعالم\n"
    "col1\tcol2\t\tcol3\n"
    "\n\n"
    "  indented  twice   spaced \n"
)

def _tiny_text() -> str:
    """13 kB of made-up words: enough distinct substrings for a few hundred spm pieces."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    return "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)) + "\n"


TINY_TEXT = _tiny_text()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_or_skip(path: Path, limit: int | None = None) -> str:
    if not path.exists():
        pytest.skip(f"corpus mirror {path} is absent on this machine")
    with open(path, encoding="utf-8") as f:
        return f.read(limit) if limit else f.read()


def normalise_words(text: str) -> str:
    """What a word tokenizer keeps of ``text``: single spaces, lines kept."""
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


@pytest.mark.parametrize("module", ["", ".base", ".char", ".word", ".spm", ".decoder"])
def test_module_doctests(module):
    assert doctest.testmod(importlib.import_module("lmgen.tokenizer" + module)).failed == 0


# -- char ----------------------------------------------------------------------------


def test_char_vocabulary_is_specials_then_sorted_code_points():
    tok = build_tokenizer("char", ["ba\n", "ca"])
    assert isinstance(tok, CharTokenizer)
    assert tok.pieces == [END, UNK, "\n", "a", "b", "c"]
    assert (tok.end_id, tok.unk_id, tok.vocab_size) == (0, 1, 6)
    assert tok.encode("abc\n") == [3, 4, 5, 2]
    assert [tok.piece(i) for i in range(3)] == ["[END]", "<unk>", "\n"]


def test_char_round_trips_hard_unicode():
    tok = build_tokenizer("char", [HARD])
    assert tok.decode(tok.encode(HARD)) == HARD
    # ZWJ emoji, skin tones and combining marks are several code points, one token each
    assert [len(tok.encode(s)) for s in ["👩\u200d💻", "👍🏽", "e\u0301"]] == [3, 2, 2]
    assert tok.count_unknown(HARD) == 0


@SETTINGS
@given(st.text())
def test_char_round_trips_any_text_it_was_built_from(text):
    tok = build_tokenizer("char", [text] if text else ["x"])
    ids = tok.encode_array(text)
    assert ids.dtype == np.int64 and ids.tolist() == tok.encode(text)
    assert tok.decode(ids) == text


@SETTINGS
@given(st.text(alphabet=st.sampled_from(sorted(set(HARD) | set("xyz")))))
def test_char_round_trips_text_drawn_from_its_vocabulary(text):
    tok = build_tokenizer("char", [HARD + "xyz"])
    assert tok.decode(tok.encode(text)) == text
    assert tok.unknown_symbols(text) == []


@SETTINGS
@given(st.text(alphabet="abc"), st.text(alphabet="€漢👍\U0010ffff", min_size=1))
def test_char_unseen_characters_become_unk(known, unseen):
    tok = build_tokenizer("char", ["abc"])
    text = known + unseen + known
    ids = tok.encode(text)
    assert ids == [1 if c in unseen else "abc".index(c) + 2 for c in text]
    assert tok.count_unknown(text) == len(unseen)
    assert tok.unknown_symbols(text) == list(dict.fromkeys(unseen))
    assert tok.decode(ids) == known + "\ufffd" * len(unseen) + known  # one char per <unk>


def test_char_unknown_symbols_are_distinct_ordered_and_capped():
    tok = build_tokenizer("char", ["a"])
    assert tok.unknown_symbols("zaayxzy") == ["z", "y", "x"]
    assert len(tok.unknown_symbols("".join(map(chr, range(0x4E00, 0x4E40))))) == 20
    assert tok.unknown_symbols("aaa") == []


def test_char_min_count_drops_rare_characters():
    tok = build_tokenizer("char", ["aaab", "bc"], min_count=2)
    assert tok.pieces == [END, UNK, "a", "b"]


def test_char_tinyshakespeare_vocabulary_and_fast_vectorised_encoding():
    text = read_or_skip(SHAKESPEARE)
    tok = build_tokenizer("char", [text[i : i + 100_000] for i in range(0, len(text), 100_000)])
    assert tok.vocab_size == 65 + 2
    start = time.perf_counter()
    ids = tok.encode_array(text)
    elapsed = time.perf_counter() - start
    index = {c: i for i, c in enumerate(tok.pieces) if i >= 2}
    assert ids.tolist() == [index[c] for c in text]  # the plain-Python reference
    assert tok.decode(ids) == text
    assert elapsed < 0.5, f"encode_array took {elapsed:.2f} s for {len(text) / 1e6:.1f} MB"


# -- decode and [END] ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "word"])
def test_end_separates_documents_and_is_dropped_at_the_edges(kind):
    tok = build_tokenizer(kind, ["a b\n"])
    a, b = tok.encode("a"), tok.encode("b")
    assert tok.decode([0] + a + [0] + b + [0]) == "a\nb"
    assert tok.decode(a + [0, 0] + b) == "a\n\nb"  # an empty document in between
    assert tok.decode([0]) == "" and tok.decode([]) == ""
    assert tok.decode(np.array(a + [0] + b)) == "a\nb"
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode([tok.vocab_size])


# -- word ----------------------------------------------------------------------------


def test_word_vocabulary_by_frequency_then_alphabetical_and_caps():
    texts = ["b a c\n", "a c d d\n", "b e"]
    tok = build_tokenizer("word", texts)
    assert isinstance(tok, WordTokenizer)
    # counts: a2 b2 c2 d2 \n2 e1; ties in code point order ("\n" sorts first)
    assert tok.pieces == [END, UNK, "\n", "a", "b", "c", "d", "e"]
    assert build_tokenizer("word", texts, max_vocab=4).pieces == [END, UNK, "\n", "a"]
    assert build_tokenizer("word", texts, min_count=2).pieces == [END, UNK, "\n", "a", "b", "c", "d"]
    # the same vocabulary however the text is chunked
    assert build_tokenizer("word", ["".join(texts)]).pieces == tok.pieces


def test_word_round_trip_normalises_whitespace_only():
    tok = build_tokenizer("word", [HARD])
    assert tok.decode(tok.encode(HARD)) == normalise_words(HARD)
    assert tok.decode(tok.encode("café\n\n\n漢字")) == "café\n\n\n漢字"  # paragraphs survive
    assert tok.count_unknown(HARD) == 0


WORDS = ["the", "café", "漢字", "👩\u200d💻", "👍🏽", "e\u0301", "שלום", "x"]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from([" ", "  ", "\t", "\n", " \n ", "\n\n"]))))
def test_word_round_trips_random_text_up_to_whitespace(pairs):
    tok = build_tokenizer("word", [" ".join(WORDS) + "\n"])
    text = "".join(w + sep for w, sep in pairs)
    assert tok.decode(tok.encode_array(text)) == normalise_words(text).strip(" ")


def test_word_literal_unk_is_unk_and_unknown_words_are_reported():
    tok = build_tokenizer("word", ["the <unk> sat on the mat\n"])
    assert UNK not in tok.pieces[2:]  # the literal word is not a second entry
    assert tok.encode("the <unk> sat") == [tok.pieces.index("the"), 1, tok.pieces.index("sat")]
    assert tok.count_unknown("the <unk> sat") == 0  # <unk> is in the vocabulary
    assert tok.encode("a dog [END] sat") == [1, 1, 1, tok.pieces.index("sat")]  # text cannot end a document
    assert tok.count_unknown("a dog dog sat") == 3
    assert tok.unknown_symbols("a dog dog [END] sat") == ["a", "dog", "[END]"]
    assert tok.decode(tok.encode("the dog")) == "the <unk>"


def test_word_ptb_vocabulary_is_the_classic_10k():
    text = read_or_skip(PTB_TRAIN)
    # PTB's documents are its lines: the newline becomes [END] (the papers' <eos>)
    tok = build_tokenizer("word", text.split("\n"))
    assert tok.vocab_size == 10_000  # [END] + 9,999 word types, <unk> being our id 1
    assert tok.encode("<unk>") == [1] and tok.piece(1) == UNK
    assert "\n" not in tok.pieces
    line = text.split("\n")[5]
    assert tok.decode(tok.encode(line)) == normalise_words(line).strip()
    # fed raw, the newline is a word of its own
    assert build_tokenizer("word", [text]).vocab_size == 10_001


# -- spm -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wiki_text() -> str:
    return read_or_skip(WIKITEXT_TRAIN, 200_000)


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def spm_tok(request, wiki_text) -> SentencePieceTokenizer:
    return build_tokenizer("spm", wiki_text.splitlines(keepends=True), vocab_size=1000, model_type=request.param)


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tiny_spm(request) -> SentencePieceTokenizer:
    """Runs without the corpus mirror: made-up words, so most of HARD is byte pieces."""
    return build_tokenizer("spm", [TINY_TEXT], vocab_size=400, model_type=request.param)


def test_spm_special_ids_and_vocab_size(spm_tok):
    assert isinstance(spm_tok, SentencePieceTokenizer)
    assert spm_tok.vocab_size == 1000
    assert spm_tok.pieces[:2] == [END, UNK] and (spm_tok.end_id, spm_tok.unk_id) == (0, 1)
    assert spm_tok.piece(spm_tok.newline_id) == "\n"
    ids = spm_tok.encode("the game")
    assert 0 not in ids and "".join(spm_tok.piece(i) for i in ids) == "the game"


def check_spm_round_trips(tok: SentencePieceTokenizer) -> None:
    assert tok.decode(tok.encode(HARD)) == HARD
    for text in ["", "\n", "\n\n", "a\n", "\na", " ", "  x  \n\t\n", "▁ and ▁▁x", "<nl> [END] <unk>x<unk>"]:
        assert tok.decode(tok.encode(text)) == text, repr(text)
    ids = tok.encode("one\ntwo\n\nthree")
    assert ids.count(tok.newline_id) == 3


def test_spm_round_trips_hard_unicode_and_multiline(spm_tok):
    check_spm_round_trips(spm_tok)


def test_spm_round_trips_without_the_mirror(tiny_spm):
    check_spm_round_trips(tiny_spm)


def test_spm_unseen_characters_round_trip_through_bytes(spm_tok, wiki_text):
    unseen = "ꙮ𝔘🦜"
    assert not set(unseen) & set(wiki_text)
    ids = spm_tok.encode(unseen)
    assert spm_tok.unk_id not in ids and len(ids) == len(unseen.encode("utf-8"))  # all byte pieces
    assert spm_tok.decode(ids) == unseen
    assert spm_tok.count_unknown(unseen) == 0 and spm_tok.unknown_symbols(unseen) == []


def test_spm_literal_unk_is_unk(spm_tok, wiki_text):
    assert UNK in wiki_text  # WikiText writes rare words as <unk>
    ids = spm_tok.encode("a <unk> b")
    assert ids.count(1) == 1 and spm_tok.decode(ids) == "a <unk> b"
    assert spm_tok.count_unknown("a <unk> b") == 0


def test_spm_encode_array_matches_encode_on_real_text(spm_tok, wiki_text):
    text = wiki_text[:50_000]
    ids = spm_tok.encode_array(text)
    assert ids.dtype == np.int64 and ids.tolist() == spm_tok.encode(text)
    assert spm_tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # subwords, not characters


@SETTINGS
@given(text=st.text())
def test_spm_round_trips_any_text(spm_tok, text):
    assert spm_tok.decode(spm_tok.encode_array(text)) == text


@SETTINGS
@given(st.lists(st.sampled_from(list(HARD) + ["<unk>", "▁", "the ", "\r", "\x00", "[END]"])).map("".join))
def test_spm_round_trips_text_built_from_hard_pieces(tiny_spm, text):
    assert tiny_spm.decode(tiny_spm.encode(text)) == text


def test_spm_training_is_deterministic_and_pickles(tiny_spm):
    half = TINY_TEXT.index("\n", len(TINY_TEXT) // 2) + 1  # chunks are whole lines
    again = build_tokenizer("spm", [TINY_TEXT[:half], TINY_TEXT[half:]], **tiny_spm.options)
    assert again._model == tiny_spm._model
    clone = pickle.loads(pickle.dumps(tiny_spm))
    assert clone.encode(HARD) == tiny_spm.encode(HARD)


def test_spm_vocab_too_large_for_corpus_says_how_to_fix():
    with pytest.raises(TokenizerError, match=r"too large.*lower --spm-vocab to \d+"):
        build_tokenizer("spm", ["a tiny corpus\n"], vocab_size=5000)
    with pytest.raises(TokenizerError, match="too small.*raise --spm-vocab"):
        build_tokenizer("spm", ["a tiny corpus\n"], vocab_size=100)


def test_spm_without_byte_fallback_reports_unknowns():
    tok = build_tokenizer("spm", ["the cat sat on the mat\n" * 20], vocab_size=15, byte_fallback=False)
    assert tok.encode("the zebra")[-5:].count(1) >= 1
    assert tok.count_unknown("the zebra") >= 1
    assert tok.unknown_symbols("the zebra <unk>") == ["z", "b", "r"]


def test_spm_keeps_errors_raised_while_reading_the_corpus():
    class CorpusGone(Exception):
        pass

    def chunks():
        yield "some text\n"
        raise CorpusGone("disk unplugged")

    with pytest.raises(CorpusGone, match="unplugged"):
        build_tokenizer("spm", chunks(), vocab_size=300)


# -- build errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, options, message",
    [
        ("bytes", {}, "unknown tokenizer kind 'bytes'; choose one of char, word, spm"),
        ("char", {"max_vocab": 10}, "unknown option.*max_vocab.*valid: min_count"),
        ("word", {"max_vocab": 1}, "max_vocab must be an integer >= 2, got 1"),
        ("word", {"min_count": 0}, "min_count must be an integer >= 1"),
        ("spm", {"model_type": "wordpiece"}, "model_type must be 'bpe' or 'unigram'"),
        ("spm", {"vocab_size": "8k"}, "vocab_size must be an integer"),
        ("char", {}, "empty text"),
        ("word", {}, "empty text"),
        ("spm", {"vocab_size": 300}, "empty text"),
    ],
)
def test_build_rejects_bad_requests_clearly(kind, options, message):
    with pytest.raises(TokenizerError, match=message):
        build_tokenizer(kind, [] if message == "empty text" else ["some text\n"], **options)


# -- save / load ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["char", "word", "spm"])
def any_tok(request):
    text = TINY_TEXT + HARD + "the cat sat on the mat\n"
    options = {"vocab_size": 450} if request.param == "spm" else {}
    return build_tokenizer(request.param, [text], **options)


def test_save_load_gives_identical_tokenizer(any_tok, tmp_path):
    files = any_tok.save(tmp_path / "ckpt")
    assert files == ([TOKENIZER_FILE, "tokenizer.model"] if any_tok.kind == "spm" else [TOKENIZER_FILE])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(files)
    loaded = load_tokenizer(tmp_path / "ckpt")
    assert type(loaded) is type(any_tok) and loaded.pieces == any_tok.pieces
    text = HARD + "zebra ꙮ <unk> the mat"
    assert loaded.encode(text) == any_tok.encode(text)
    assert loaded.decode(any_tok.encode(HARD)) == any_tok.decode(any_tok.encode(HARD))
    assert loaded.to_dict() == any_tok.to_dict()
    assert any_tok.to_dict()["kind"] == any_tok.kind and any_tok.to_dict()["vocab_size"] == any_tok.vocab_size
    state = json.loads((tmp_path / "ckpt" / TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert state["format"] == "lmgen-tokenizer/1" and state["vocab"][:2] == [END, UNK]


def test_char_vocabulary_with_lone_surrogates_saves(tmp_path):
    text = "ok\udcff"  # what surrogateescape makes of an undecodable byte
    tok = build_tokenizer("char", [text])
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).decode(tok.encode(text)) == text


def _saved(tok, folder: Path) -> Path:
    tok.save(folder)
    return folder


def test_load_corrupt_json_names_the_file(tmp_path):
    folder = _saved(build_tokenizer("char", ["abc"]), tmp_path)
    (folder / TOKENIZER_FILE).write_text('{"format": "lmgen-tok', encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(str(folder / TOKENIZER_FILE)) + ".*damaged"):
        load_tokenizer(folder)


def test_load_missing_files_name_them(tmp_path, tiny_spm):
    with pytest.raises(TokenizerError, match=re.escape(str(tmp_path / "nowhere" / TOKENIZER_FILE))):
        load_tokenizer(tmp_path / "nowhere")
    folder = _saved(tiny_spm, tmp_path / "spm")
    (folder / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match=re.escape(str(folder / "tokenizer.model"))):
        load_tokenizer(folder)
    (folder / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match=re.escape(str(folder / "tokenizer.model")) + " is damaged"):
        load_tokenizer(folder)


def test_load_unknown_format_version_says_so(tmp_path):
    folder = _saved(build_tokenizer("word", ["a b"]), tmp_path)
    path = folder / TOKENIZER_FILE
    state = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**state, "format": "lmgen-tokenizer/9"}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(str(path)) + ".*lmgen-tokenizer/9.*lmgen-tokenizer/1"):
        load_tokenizer(folder)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: {**s, "kind": "bytes"},
        lambda s: {**s, "vocab": s["vocab"][1:]},
        lambda s: {**s, "vocab": [END, UNK, "b", "a"]},  # char table out of order
        lambda s: {**s, "vocab": [END, UNK, "ab"]},
        lambda s: [s],
    ],
)
def test_load_malformed_content_names_the_file(tmp_path, edit):
    folder = _saved(build_tokenizer("char", ["ab"]), tmp_path)
    path = folder / TOKENIZER_FILE
    path.write_text(json.dumps(edit(json.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(str(path))):
        load_tokenizer(folder)
