"""Documents in a user's file: --separator none|line|blank|REGEX and whole-document splits.

Oracles: hand-written document lists for small files; a whole-text ``re.finditer`` for the
streaming regex reader; the token files of every split decoded and compared with an
independent split of the raw text; every arrangement of a tiny draw counted.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgen import corpora
from lmgen.cli import main
from lmgen.config import TrainConfig
from lmgen.corpora import documents, reading
from lmgen.data import encode_split, prepare_tokenizer
from lmgen.errors import ConfigError, CorpusError
from lmgen.runs import RESUME_FIXED


def write(tmp_path, data: bytes, name: str = "mine.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def all_documents(path, separator: str) -> list[str]:
    """Every document of the file, in file order (nothing held out)."""
    corpus = corpora.resolve(path, separator=separator, valid_fraction=0, test_fraction=0)
    assert corpus.splits == ("train",)
    return list(corpus.documents("train"))


# --------------------------------------------------------------------------- separator none: as before


def test_separator_none_keeps_the_fingerprints_and_splits_from_before(tmp_path):
    # Hex digests computed by the code before --separator existed: the token caches and
    # --resume of every earlier run on a user's file or folder stay valid.
    path = write(tmp_path, b"one\r\ntwo\n\nthree caf\xc3\xa9\n", "fp.txt")
    corpus = corpora.resolve(path)
    assert (corpus.split, corpus.separator, corpus.rule()) == ("chars", "none", "chars 90/5/5")
    assert corpus.fingerprint == "2d2baedf8082501ff0d48d7c911bc25e4985f54d2c6e79d051db1b48ea3288f6"
    assert corpora.resolve(path, **corpora.resolve_options(asdict(TrainConfig()))).fingerprint == corpus.fingerprint
    folder = tmp_path / "fold"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"first file\n")
    (folder / "sub" / "b.md").write_bytes(b"second\n")
    corpus = corpora.resolve(folder, separator="none")
    assert corpus.separator == "file"
    assert corpus.fingerprint == "4e41c0516d34a300d9ddfa52811834f19777fdce10c5909d405c2e8d01352e0a"


def test_separator_none_with_other_fractions_cuts_characters(tmp_path):
    text = "".join(f"line {i}\n" for i in range(200))
    path = write(tmp_path, text.encode())
    corpus = corpora.resolve(path, valid_fraction=0.2, test_fraction=0)
    n = len(text)
    assert corpus.splits == ("train", "valid") and corpus.rule() == "chars 80/20/0"
    assert (corpus.text("train"), corpus.text("valid")) == (text[: int(n * 0.8)], text[int(n * 0.8) :])


# --------------------------------------------------------------------------- small files, exact documents


@pytest.mark.parametrize("data, separator, expected", [
    (b"Alice\r\nBob\r\n\r\n  \r\nCarol", "line", ["Alice", "Bob", "Carol"]),  # CRLF, blank lines, no last \n
    (b"\xef\xbb\xbfx\ny\n\n\n", "line", ["x", "y"]),  # BOM, trailing blank lines
    (b"a\rb\r\r", "line", ["a", "b"]),  # old Mac line ends
    (b"\n\n p1 l1\r\np1 l2\r\n\r\n \t\r\n\r\np2\n\n", "blank", [" p1 l1\np1 l2", "p2"]),
    (b"one\n%\ntwo\r\n%\r\n\n%\nthree\n%\n", r"\n%\n", ["one", "two", "three"]),  # empty document, trailing sep
    (b"# a\ntext\n# b\nmore\n", r"\n(?=# )", ["# a\ntext", "# b\nmore"]),  # a lookahead keeps the heading
    (b"a;b;;c;\n", ";", ["a", "b", "c"]),  # the file's last line end is not part of a document
    (b"xENDyendz", "(?i)end", ["x", "y", "z"]),
    (b"caf\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80caf\xc3\xa9", "\u20ac\U0001f600", ["caf\u00e9", "caf\u00e9"]),
])
def test_documents_of_small_files(tmp_path, data, separator, expected):
    assert all_documents(write(tmp_path, data), separator) == expected


def test_a_folder_ends_a_document_at_each_file(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x1\nx2")  # no last line end: x2 still ends at the file's end
    (tmp_path / "b.txt").write_bytes(b"y1\n\ny2 y2\n")
    assert all_documents(tmp_path, "line") == ["x1", "x2", "y1", "y2 y2"]
    assert all_documents(tmp_path, "blank") == ["x1\nx2", "y1", "y2 y2"]
    assert all_documents(tmp_path, r"\d") == ["x", "\nx", "y", "\n\ny", " y"]


# --------------------------------------------------------------------------- streaming == whole-text search


def reference_regex(norm: str, pattern: str) -> list[str]:
    """The documents of a whole-text search: text between matches, one final \\n dropped, blank ones out."""
    docs, pos = [], 0
    for m in re.finditer(pattern, norm):
        docs.append(norm[pos : m.start()])
        pos = m.end()
    last = norm[pos:]
    docs.append(last[:-1] if last.endswith("\n") else last)
    return [d for d in docs if d.strip()]


# Every match is at most 4 characters, or (%+) every prefix of one is a match: within the window.
PATTERNS = [r"\n%\n", r"%+", r"%b?", r"\n[ \n]{0,2}\n", r"(?<=a)b", r"\n(?=a)", r"b\n|\nb", r"^a|%", r"(?i)B"]


def streamed_documents(path, pattern: str, chunk: int, window: int) -> list[str]:
    """The regex reader's documents with tiny pieces and search window, so that it slides many times."""
    with mock.patch.object(reading, "CHUNK_BYTES", chunk), mock.patch.object(reading, "REGEX_WINDOW", window), \
            mock.patch.object(reading, "REGEX_CONTEXT", 2):
        pieces = list(reading.drop_blank(reading.stream([(path, 0, path.stat().st_size)], pattern, "strict")))
    docs, buf = [], []
    for piece, ends in pieces:
        buf.append(piece)
        if ends:
            docs.append("".join(buf))
            buf = []
    assert not buf
    return docs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(st.sampled_from(["a", "b", "B", "%", " ", "\n", "\r\n", "\r", "\u00e9", "\U0001f600"]),
                  max_size=80).map("".join),
    pattern=st.sampled_from(PATTERNS),
    chunk=st.integers(1, 12),
    window=st.integers(5, 9),
)
def test_the_regex_reader_equals_a_whole_text_search(tmp_path, text, pattern, chunk, window):
    path = write(tmp_path, text.encode())
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    assert streamed_documents(path, pattern, chunk, window) == reference_regex(norm, pattern)


LONG_TEXTS = ["ab%a%%ba\n%\nab" * 8, "a\n \nb\nb\n\n\na%b\r\nBa%%b" * 6, "\u00e9a\nb%\U0001f600\n%\n\n" * 7]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_regex_reader_on_long_texts_for_every_piece_and_window_size(tmp_path, pattern):
    for i, text in enumerate(LONG_TEXTS):
        path = write(tmp_path, text.encode(), f"long{i}.txt")
        expected = reference_regex(text.replace("\r\n", "\n"), pattern)
        for chunk in range(1, 13):
            for window in (5, 6, 7, 8):
                assert streamed_documents(path, pattern, chunk, window) == expected, (text, chunk, window)


# --------------------------------------------------------------------------- splits: whole documents, [END]


def reference_documents(norm: str, separator: str) -> list[str]:
    """An independent split of the raw text (the file's text with line ends normalised)."""
    if separator == "line":
        return [line for line in norm.split("\n") if line.strip()]
    if separator == "blank":
        paragraphs, current = [], []
        for line in norm.split("\n"):
            if line.strip():
                current.append(line)
            elif current:
                paragraphs.append("\n".join(current))
                current = []
        return paragraphs + (["\n".join(current)] if current else [])
    return reference_regex(norm, separator)


def names_file(tmp_path, n: int = 240):
    """Unique items, CRLF line ends, blank lines and a paragraph break every 7th item, non-ASCII."""
    lines = []
    for i in range(n):
        lines.append(f"item {i} caf\u00e9 \u20ac{'x' * (i % 5)}")
        if i % 7 == 6:
            lines += ["", "  "]
    return write(tmp_path, ("\r\n".join(lines) + "\r\n").encode(), "names.txt")


@pytest.mark.parametrize("separator", ["line", "blank", r"\n(?=item \d*5 )"])
def test_splits_are_whole_documents_each_ending_with_end(tmp_path, separator):
    path = names_file(tmp_path)
    norm = path.read_bytes().decode().replace("\r\n", "\n")
    expected = reference_documents(norm, separator)
    corpus = corpora.resolve(path, separator=separator, valid_fraction=0.1, test_fraction=0.15, split_seed=3)
    tok = prepare_tokenizer(corpus, "char")
    decoded: dict[str, list[str]] = {}
    for split in ("train", "valid", "test"):
        tf = encode_split(corpus, tok, split)
        ids = np.asarray(tf.tokens).tolist()
        assert ids[-1] == tok.end_id  # the split ends with a document's [END]
        cuts = [i for i, t in enumerate(ids) if t == tok.end_id]
        assert tf.documents == len(cuts)
        starts = [0] + [c + 1 for c in cuts[:-1]]
        decoded[split] = [tok.decode(ids[a:b]) for a, b in zip(starts, cuts)]
    # No document is cut: every decoded document is one of the reference's, and together they are all of them.
    assert sorted(sum(decoded.values(), [])) == sorted(expected)
    for split, docs in decoded.items():
        where = [expected.index(d) for d in docs]
        assert where == sorted(where), split  # each split keeps file order
        assert abs(len(docs) - len(expected) * dict(train=0.75, valid=0.1, test=0.15)[split]) <= 1
    assert decoded["valid"] == list(corpus.documents("valid"))


@pytest.mark.parametrize("n", [3, 4, 9, 10, 11, 19, 20, 21, 57, 200])
@pytest.mark.parametrize("valid, test", [(0.05, 0.05), (0.1, 0.0), (0.33, 0.25), (0.0, 0.5)])
def test_fractions_are_kept_to_within_one_document(tmp_path, n, valid, test):
    path = write(tmp_path, "".join(f"doc {i}\n" for i in range(n)).encode())
    corpus = corpora.resolve(path, separator="line", valid_fraction=valid, test_fraction=test)
    sizes = {s: corpus.num_documents(s) for s in corpus.splits}
    assert sum(sizes.values()) == n and sizes["train"] >= 1
    for split, fraction in (("valid", valid), ("test", test)):
        assert (split in sizes) == (fraction > 0)
        if fraction > 0:
            assert sizes[split] >= 1 and abs(sizes[split] - n * fraction) <= 1


def test_the_split_is_fixed_by_the_split_seed(tmp_path):
    path = names_file(tmp_path)

    def valid_docs(seed: int) -> list[str]:
        return list(corpora.resolve(path, separator="line", split_seed=seed).documents("valid"))

    assert valid_docs(7) == valid_docs(7)
    assert valid_docs(7) != valid_docs(8)
    a = corpora.resolve(path, separator="line", split_seed=7)
    b = corpora.resolve(path, separator="line", split_seed=8)
    assert a.fingerprint != b.fingerprint  # so their token caches differ
    # the training seed does not move the split: two runs with other --seed share a validation set
    one = corpora.resolve_options(asdict(TrainConfig(corpus=str(path), separator="line", seed=1)))
    two = corpora.resolve_options(asdict(TrainConfig(corpus=str(path), separator="line", seed=2)))
    assert corpora.resolve(path, **one).fingerprint == corpora.resolve(path, **two).fingerprint


def test_the_draw_makes_every_arrangement_equally_likely():
    n, counts, rounds = 4, (2, 1, 1), 6000
    seen = collections.Counter(tuple(documents.assign(n, counts, seed)) for seed in range(rounds))
    assert len(seen) == 12  # 4! / (2! 1! 1!) arrangements, all drawn
    for labels, times in seen.items():
        assert sorted(labels) == [0, 0, 1, 2]  # exact counts every time
        assert abs(times - rounds / 12) < 5 * (rounds / 12 * 11 / 12) ** 0.5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("settings, message", [
    ({"separator": "("}, "--separator must be none, line, blank or a regular expression; '(' is not a valid one"),
    ({"separator": r"\n*"}, "matches the empty string"),
    ({"separator": "file"}, "--separator must be none, line, blank or a regular expression (none makes each"),
    ({"valid_fraction": -0.1}, "--valid-fraction must be in [0, 1), got -0.1"),
    ({"test_fraction": 1.0}, "--test-fraction must be in [0, 1), got 1.0"),
    ({"valid_fraction": 0.5, "test_fraction": 0.5}, "--valid-fraction must be below 1 - --test-fraction"),
    ({"split_seed": -1}, "--split-seed must be a whole number in [0, 2^63), got -1"),
])
def test_bad_settings_name_the_flag(settings, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings)
    assert message in str(err.value)


def test_bad_corpus_reads_are_one_clear_error(tmp_path):
    path = write(tmp_path, b"a.b.c\n")
    with pytest.raises(CorpusError, match=r"matched the empty string \(after 'a.'\)"):
        all_documents(path, r"(?<=\.)")  # empty only after a dot: found while reading
    with pytest.raises(CorpusError, match="has 2 document.*too few for a training split"):
        corpora.resolve(write(tmp_path, b"x\n\n \ny\n"), separator="line").pieces("train")
    with pytest.raises(CorpusError, match="registry corpus with its own documents and splits"):
        corpora.resolve("tinyshakespeare", separator="line")
    with pytest.raises(CorpusError, match="registry corpus"):
        corpora.resolve("ptb", test_fraction=0.2)
    with pytest.raises(CorpusError, match="--separator file: use none"):
        corpora.resolve(path, separator="file")


def test_a_registry_corpus_with_a_fraction_is_refused_by_lmgen_train(tmp_path, capsys):
    code = main(["train", "--corpus", "tinyshakespeare", "--valid-fraction", "0.2", "--threads", "1",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "registry corpus" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_document_settings_cannot_change_on_resume():
    assert {"separator", "valid_fraction", "test_fraction", "split_seed"} <= RESUME_FIXED


# --------------------------------------------------------------------------- end to end: names, one per [END]


def lmgen(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "lmgen", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmgen {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def test_train_on_names_with_line_separator_samples_one_name_per_end(tmp_path):
    names = [a + b for a in ("Ana", "Bo", "Cy", "Di", "Ed", "Flo") for b in ("lin", "ra", "mo", "tessa", "k", "vi")]
    path = write(tmp_path, ("\r\n".join(names) + "\r\n\r\n").encode(), "names.txt")
    out = tmp_path / "run"
    common = ["--corpus", path, "--separator", "line", "--valid-fraction", "0.1", "--test-fraction", "0",
              "--batch", "4", "--bptt", "16", "--threads", "1", "--out", out, "--no-progress"]
    lmgen("train", *common, "--hidden", "64", "--embed", "16", "--steps", "300", "--lr", "0.02", "--eval-every", "300")
    saved = json.loads((out / "last" / "config.json").read_text())["train"]
    assert (saved["separator"], saved["valid_fraction"], saved["test_fraction"]) == ("line", 0.1, 0.0)

    proc = lmgen("sample", out, "--num-samples", "8", "--max-new-tokens", "40", "--seed", "0", "--threads", "1")
    samples = re.split(r"--- sample \d+ of 8 ---\n", proc.stdout)[1:]
    assert len(samples) == 8
    for s in samples:
        item = s.removesuffix("\n")
        # one item, ended by [END] (shorter than --max-new-tokens), made of the names' letters
        assert 0 < len(item) < 40 and "\n" not in item and set(item) <= set("".join(names)), samples
    assert sum(s.removesuffix("\n") in names for s in samples) >= 4  # it learnt the names, one per sample

    refused = lmgen("train", *common, "--resume", "--separator", "blank", "--steps", "310", check=False)
    assert refused.returncode == 1 and "--separator cannot change when resuming" in refused.stderr
    # eval reads the run's corpus with its separator and split: the same held-out documents
    report = json.loads(lmgen("eval", out, "--split", "valid", "--exact", "--json", "--threads", "1").stdout)
    assert report["results"][0]["tokens"] == sum(len(n) + 1 for n in corpora.resolve(
        path, separator="line", valid_fraction=0.1, test_fraction=0).documents("valid"))
