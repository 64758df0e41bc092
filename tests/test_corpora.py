"""Corpora: registry, splits as published, streaming pieces, user files, fetch over real HTTP."""

from __future__ import annotations

import bz2
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgen import corpora
from lmgen.cli import tables
from lmgen.corpora import Corpus, CorpusSpec, RemoteFile, download, reading
from lmgen.corpora import corpus as corpus_module
from lmgen.errors import CorpusError

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- registry vs mirror


def test_registry_checksums_and_sizes_match_the_mirror(mirror):
    checked = 0
    for spec in corpora.list_corpora():
        for f in spec.files:
            path = mirror / spec.folder / f.name
            if not path.is_file():
                continue  # enwik8 is not in the mirror
            assert path.stat().st_size == f.size, path
            assert reading.sha256_file(path) == f.sha256, path
            checked += 1
    assert checked == 13  # every corpus file of SOURCES.md (FILES.txt is not corpus text)


def test_registry_urls_are_pinned_and_https():
    for spec in corpora.list_corpora():
        for f in spec.files:
            if f.url and "raw.githubusercontent.com" in f.url and "wojzaremba" not in f.url:
                commit = f.url.split("/")[5]
                assert len(commit) == 40, f.url
    assert corpora.REGISTRY["linux-mm"].files[0].url is None
    assert corpora.DEFAULT_CORPUS in corpora.REGISTRY


def test_corpus_table_shows_where_each_corpus_is(mirror, monkeypatch):
    monkeypatch.setenv(corpora.MIRROR_ENV, str(mirror))
    rows = {line.split()[0]: line for line in tables.format_corpus_table().splitlines()[1:-1]}
    assert list(rows) == list(corpora.REGISTRY)
    assert "builtin" in rows["python-stdlib"] and "mirror" in rows["ptb"]
    assert "missing" in rows["enwik8"] and "bytes 90M/5M/5M" in rows["enwik8"]


# --------------------------------------------------------------------------- published splits


def test_tinyshakespeare_split_is_nanogpts(mirror):
    data = (mirror / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    n = len(data)
    corpus = corpora.resolve("tinyshakespeare")
    assert corpus.splits == ("train", "valid")
    train, valid = corpus.text("train"), corpus.text("valid")
    assert n == len(train) + len(valid) == 1_115_394
    assert train == data[: int(n * 0.9)]
    assert valid == data[int(n * 0.9) :]
    assert corpus.num_chars("valid") == len(valid)
    assert list(corpus.documents("valid")) == [valid]  # one document per split
    with pytest.raises(CorpusError, match="splits are train, valid"):
        corpus.pieces("test")


def test_ptb_documents_and_tokens_match_the_papers(mirror):
    corpus = corpora.resolve("ptb")
    expected = {"train": (42_068, 929_589), "valid": (3_370, 73_760), "test": (3_761, 82_430)}
    for split, (lines, tokens) in expected.items():
        docs = words = 0
        for text, ends in corpus.pieces(split):
            assert ends and "\n" not in text  # a "line" corpus: one piece per line
            docs += 1
            words += len(text.split())
        assert docs == lines
        assert words + docs == tokens
    raw = (mirror / "ptb" / "ptb.valid.txt").read_text()
    assert corpus.text("valid") == raw


def test_ptb_char_trailing_space_is_not_a_line(mirror):
    corpus = corpora.resolve("ptb-char")
    assert corpus.level == "word"
    docs = symbols = 0
    for text, ends in corpus.pieces("valid"):
        docs += ends
        symbols += len(text.split())
    assert symbols + docs == 393_042


def test_war_and_peace_bom_dropped_crlf_normalised_pieces_bounded(mirror):
    raw = (mirror / "war-and-peace" / "warpeace_input.txt").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    expected = raw.decode("utf-8-sig").replace("\r\n", "\n")
    corpus = corpora.resolve("war-and-peace")
    got = []
    with mock.patch.object(reading, "CHUNK_BYTES", 256 * 1024):  # several pieces per split
        for split in corpus.splits:
            pieces = list(corpus.pieces(split))
            assert len(pieces) > 1
            assert [e for _, e in pieces] == [False] * (len(pieces) - 1) + [True]
            for text, _ in pieces:
                assert "\r" not in text and "\ufeff" not in text
                assert len(text) <= 256 * 1024 * 1.1
            got.append("".join(t for t, _ in pieces))
    assert "".join(got) == expected
    n = len(expected)
    assert [len(g) for g in got] == [int(n * 0.8), int(n * 0.9) - int(n * 0.8), n - int(n * 0.9)]


def test_enwiki_sample_splits_by_bytes_as_in_sources(mirror):
    corpus = corpora.resolve("enwiki-xml-sample")
    sizes = [corpus.num_bytes(s) for s in corpus.splits]
    assert sizes == [5_480_771, 5_785_258 - 5_480_771, 6_089_746 - 5_785_258]
    whole = (mirror / "enwiki-xml-sample" / "enwiki_sample.xml").read_text(encoding="utf-8")
    assert "".join(corpus.text(s) for s in corpus.splits) == whole


def test_a_byte_boundary_inside_a_character_moves_to_the_next_one(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("aaaaaaaa€bbbbbbbbbb".encode())  # € is 3 bytes at offsets 8..10
    corpus = Corpus("t", [path], split="bytes", separator="none", byte_ranges=[(0, 9), (9, 13)])
    assert corpus.text("train") == "aaaaaaaa€"
    assert corpus.text("valid") == "bb"


def test_fingerprint_is_stable_cheap_and_tracks_content(mirror, tmp_path):
    a, b = corpora.resolve("ptb"), corpora.resolve("ptb")
    assert a.fingerprint == b.fingerprint != corpora.resolve("ptb-char").fingerprint
    with mock.patch.object(corpus_module, "sha256_file", side_effect=AssertionError("re-hashed")):
        _ = corpora.resolve("wikitext-2").fingerprint  # registry sha256s, no file read
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 100)
    first = corpora.resolve(path).fingerprint
    assert corpora.resolve(path).fingerprint == first
    assert corpora.resolve(path, errors="replace").fingerprint != first
    path.write_text("hello World\n" * 100)
    assert corpora.resolve(path).fingerprint != first


# --------------------------------------------------------------------------- built-in default


def test_python_stdlib_needs_no_mirror(monkeypatch):
    monkeypatch.delenv(corpora.MIRROR_ENV, raising=False)
    corpus = corpora.resolve()
    assert corpus.name == corpora.DEFAULT_CORPUS == "python-stdlib"
    assert corpus.location == "builtin" and corpus.separator == "file"
    train = corpus.text("train")
    assert len(train) > 500_000
    assert "http" in train and "    " in train and '"""' in train
    docs = list(corpus.documents("train"))
    assert len(docs) > 20
    assert docs[0] == corpus.paths[0].read_text(encoding="utf-8").replace("\r\n", "\n")
    n = sum(len(t) for s in corpus.splits for t, _ in corpus.pieces(s))
    assert n == corpus._content_chars
    assert len("".join(t for t, _ in corpus.pieces("valid"))) == int(n * 0.95) - int(n * 0.9)


# --------------------------------------------------------------------------- user files and folders


def test_a_text_file_is_one_document_split_90_5_5(tmp_path):
    text = "".join(f"line {i}: caf\u00e9 \u20ac\n" for i in range(1000))
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    corpus = corpora.resolve(str(path))
    assert corpus.splits == ("train", "valid", "test") and corpus.separator == "none"
    parts = [corpus.text(s) for s in corpus.splits]
    n = len(text)
    assert parts == [text[: int(n * 0.9)], text[int(n * 0.9) : int(n * 0.95)], text[int(n * 0.95) :]]
    info = corpus.info()
    assert info["splits"]["valid"]["chars"] == len(parts[1]) and info["splits"]["test"]["documents"] == 1
    assert "notes.txt" in tables.format_info(corpus)


def test_a_folder_is_one_document_per_text_file(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("second file\n" * 50)
    (tmp_path / "a.txt").write_text("first file\n" * 50)
    (tmp_path / "c.py").write_text("print('third')\n" * 50)
    (tmp_path / "blob.dat").write_text("not read\n")  # a binary suffix
    (tmp_path / "nul.txt").write_bytes(b"text\0with a NUL\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / ".hidden.txt").write_text("secret\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    corpus = corpora.resolve(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in corpus.paths] == ["a.txt", "b/two.md", "c.py"]
    assert len(corpus.skipped) == 3 and corpus.separator == "file"
    docs = [d for s in corpus.splits for d in corpus.documents(s)]
    # cuts at 90% / 95% fall inside the last file, so it is split into three documents
    assert docs[:2] == ["first file\n" * 50, "second file\n" * 50]
    assert "".join(docs[2:]) == "print('third')\n" * 50


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "e.txt").write_text(""), "is empty"),
        (lambda d: (d / "e.txt").write_text("  \n\t\r\n \n"), "only whitespace"),
    ],
)
def test_empty_and_whitespace_files_are_refused(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(CorpusError, match=message):
        corpora.resolve(tmp_path / "e.txt")


def test_empty_folders_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="no text files"):
        corpora.resolve(tmp_path)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "w.txt").write_text(" \n\n")
    with pytest.raises(CorpusError, match="only whitespace"):
        corpora.resolve(tmp_path)


def test_a_tiny_file_has_empty_splits(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hi")
    corpus = corpora.resolve(path)
    assert (corpus.text("train"), corpus.text("test")) == ("h", "i")  # cuts at int(2*.9), int(2*.95)
    with pytest.raises(CorpusError, match="is empty.*bigger corpus"):
        corpus.pieces("valid")


def test_bad_utf8_names_file_and_offset_and_replace_works(tmp_path):
    path = tmp_path / "latin1.txt"
    data = ("x" * 5000 + "\n").encode() * 3 + "caf\u00e9 au lait\n".encode("latin-1")
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(CorpusError) as err:  # at resolve (it reads up to the first text) or later
        corpus = corpora.resolve(path)
        [corpus.text(s) for s in corpus.splits]
    message = str(err.value)
    assert str(path) in message and f"byte offset {offset}" in message and "errors='replace'" in message
    with mock.patch.object(reading, "CHUNK_BYTES", 7):  # the bad byte far from the chunk start
        with pytest.raises(CorpusError, match=f"byte offset {offset}"):
            list(reading.read_text(path))
    replaced = corpora.resolve(path, errors="replace")
    assert "".join(replaced.text(s) for s in replaced.splits).endswith("caf\ufffd au lait\n")
    with pytest.raises(CorpusError, match="errors must be one of"):
        corpora.resolve(path, errors="ignore")


def test_unknown_name_lists_names_and_suggests():
    with pytest.raises(CorpusError) as err:
        corpora.resolve("tinyshakespear")
    message = str(err.value)
    assert "Did you mean 'tinyshakespeare'?" in message
    for name in corpora.REGISTRY:
        assert name in message


# --------------------------------------------------------------------------- streaming, any chunk size


def _reference_lines(norm: str) -> list[str]:
    lines = norm.split("\n")
    last = lines.pop()
    return lines + ([last] if last.strip() else [])


def _reference_paragraphs(norm: str) -> list[str]:
    paragraphs, current = [], []
    for line in _reference_lines(norm):
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    return paragraphs + (["\n".join(current)] if current else [])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.sampled_from(["a", "b", " ", "\n", "\r", "\r\n", "\u00e9", "\u20ac", "\U0001f600", "\ufeff"]),
        max_size=40,
    ).map("".join),
    bom=st.booleans(),
    chunk=st.integers(1, 12),
    separator=st.sampled_from(["none", "file", "line", "blank"]),
)
def test_pieces_equal_the_reference_for_any_chunk_size(tmp_path, text, bom, chunk, separator):
    path = tmp_path / "t.txt"
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    path.write_bytes(data)
    norm = data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")  # one BOM dropped
    expected = {
        "none": [norm] if norm else [],
        "file": [norm] if norm else [],
        "line": _reference_lines(norm),
        "blank": _reference_paragraphs(norm),
    }[separator]
    with mock.patch.object(reading, "CHUNK_BYTES", chunk):
        pieces = list(reading.stream([(path, 0, path.stat().st_size)], separator, "strict"))
        docs, buf = [], []
        # pieces stay near the chunk size; only a run of spaces inside a line can stretch one
        spaces = max((len(r) for r in norm.replace("\n", "x").split("x") if r.isspace()), default=0)
        bound = chunk + 2 if separator in ("none", "file") else 3 * chunk + 3 + spaces
        for piece, ends in pieces:
            assert "\r" not in piece and len(piece) <= bound
            buf.append(piece)
            if ends:
                docs.append("".join(buf))
                buf = []
        assert not buf and docs == expected
        # a chars split: the three splits put back together are the whole stream
        corpus = Corpus("t", [path], split="chars", separator=separator, fractions=(0.5, 0.3, 0.2))
        n = sum(len(d) for d in expected)
        joined = ""
        for s in corpus.splits:
            lo, hi = corpus._bounds(s, n)
            if lo == hi:
                continue
            split_pieces = list(corpus.pieces(s))
            assert split_pieces[-1][1] is True
            joined += "".join(t for t, _ in split_pieces)
            assert sum(len(t) for t, _ in split_pieces) == hi - lo
        assert joined == "".join(expected)


def test_a_line_longer_than_a_piece_is_cut_and_rejoined(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("short\n" + "x" * 2500 + "\nend\n")
    with mock.patch.object(reading, "CHUNK_BYTES", 1000):
        pieces = list(reading.stream([(path, 0, path.stat().st_size)], "line", "strict"))
    assert pieces[0] == ("short", True) and pieces[-1] == ("end", True)
    middle = pieces[1:-1]
    assert len(middle) >= 3 and all(len(t) <= 2100 for t, _ in middle)
    assert [e for _, e in middle] == [False] * (len(middle) - 1) + [True]
    assert "".join(t for t, _ in middle) == "x" * 2500


# --------------------------------------------------------------------------- fetch over HTTP


class _Server:
    """A real HTTP server on 127.0.0.1: routes map a path to bytes or ("truncate", bytes)."""

    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                truncate = isinstance(body, tuple)
                data = body[1] if truncate else body
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if truncate else data)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


TEXT = ("It was the best of times, it was the worst of times.\n" * 2000).encode()


def _spec(*files: RemoteFile, name: str = "test-corpus") -> CorpusSpec:
    return CorpusSpec(
        name=name, description="test", folder=name, files=files,
        split="chars", fractions=(0.9, 0.05, 0.05), separator="none",
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_downloads_verifies_unpacks_and_skips_present_files(server, tmp_path):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner.txt", TEXT[:5000])
    server.routes = {"/plain.txt": TEXT, "/z.zip": zipped.getvalue(), "/b.bz2": bz2.compress(TEXT[:7000])}
    spec = _spec(
        RemoteFile("plain.txt", server.url("/plain.txt"), sha(TEXT), len(TEXT)),
        RemoteFile("inner.txt", server.url("/z.zip"), sha(TEXT[:5000]), 5000,
                   archive="zip:inner.txt", archive_sha256=sha(zipped.getvalue())),
        RemoteFile("b.txt", server.url("/b.bz2"), sha(TEXT[:7000]), 7000, archive="bz2"),
    )
    folder = corpora.fetch(spec, dest=tmp_path, mirror=tmp_path / "no-mirror", progress=False)
    assert folder == tmp_path / "test-corpus"
    assert _leftovers(folder) == ["b.txt", "inner.txt", "plain.txt"]
    assert (folder / "plain.txt").read_bytes() == TEXT
    assert (folder / "inner.txt").read_bytes() == TEXT[:5000]
    assert (folder / "b.txt").read_bytes() == TEXT[:7000]
    assert len(server.requests) == 3
    corpora.fetch(spec, dest=tmp_path, mirror=tmp_path / "no-mirror", progress=False)
    assert len(server.requests) == 3  # all present with the right hash: nothing downloaded
    (folder / "plain.txt").write_bytes(b"damaged")
    corpora.fetch(spec, dest=tmp_path, mirror=tmp_path / "no-mirror", progress=False)
    assert server.requests[3:] == ["/plain.txt"] and (folder / "plain.txt").read_bytes() == TEXT


def test_fetch_bad_checksum_raises_and_leaves_nothing(server, tmp_path):
    server.routes = {"/plain.txt": TEXT}
    wrong = sha(b"something else")
    spec = _spec(RemoteFile("plain.txt", server.url("/plain.txt"), wrong, len(TEXT)))
    with pytest.raises(CorpusError) as err:
        corpora.fetch(spec, dest=tmp_path, progress=False)
    assert f"expected {wrong}, got {sha(TEXT)}" in str(err.value)
    assert _leftovers(tmp_path / "test-corpus") == []


def test_fetch_truncated_download_leaves_nothing(server, tmp_path):
    server.routes = {"/cut.txt": ("truncate", TEXT)}
    spec = _spec(RemoteFile("cut.txt", server.url("/cut.txt"), sha(TEXT), len(TEXT)))
    with pytest.raises(CorpusError, match="stopped after|cut short"):
        corpora.fetch(spec, dest=tmp_path, progress=False)
    assert _leftovers(tmp_path / "test-corpus") == []


def test_fetch_http_error_is_a_corpus_error(server, tmp_path):
    spec = _spec(RemoteFile("gone.txt", server.url("/gone.txt"), None, None))
    with pytest.raises(CorpusError, match="could not download .*gone.txt: HTTP 404"):
        corpora.fetch(spec, dest=tmp_path, progress=False)
    assert _leftovers(tmp_path / "test-corpus") == []


def test_fetch_interrupted_by_ctrl_c_leaves_nothing(server, tmp_path, monkeypatch):
    server.routes = {"/plain.txt": TEXT}
    spec = _spec(RemoteFile("plain.txt", server.url("/plain.txt"), sha(TEXT), len(TEXT)))

    def interrupt(self, done, total):
        raise KeyboardInterrupt

    monkeypatch.setattr(download._Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        corpora.fetch(spec, dest=tmp_path, progress=False)
    assert _leftovers(tmp_path / "test-corpus") == []


def test_fetch_without_sha256_warns_with_the_hash(server, tmp_path, capsys):
    server.routes = {"/plain.txt": TEXT}
    spec = _spec(RemoteFile("plain.txt", server.url("/plain.txt"), None, None))
    corpora.fetch(spec, dest=tmp_path, progress=False)
    assert sha(TEXT) in capsys.readouterr().err


def test_fetch_copies_from_the_mirror_instead_of_downloading(server, tmp_path):
    local_mirror = tmp_path / "mirror"
    (local_mirror / "test-corpus").mkdir(parents=True)
    (local_mirror / "test-corpus" / "plain.txt").write_bytes(TEXT)
    spec = _spec(RemoteFile("plain.txt", server.url("/plain.txt"), sha(TEXT), len(TEXT)))
    folder = corpora.fetch(spec, dest=tmp_path / "cache", mirror=local_mirror, progress=False)
    assert (folder / "plain.txt").read_bytes() == TEXT and server.requests == []


def test_fetch_mirror_only_corpus_explains_the_mirror(tmp_path):
    with pytest.raises(CorpusError, match="no download URL.*LMGEN_CORPORA"):
        corpora.fetch("linux-mm", dest=tmp_path, mirror=tmp_path / "empty")
    with pytest.raises(CorpusError, match="Did you mean 'ptb'"):
        corpora.fetch("ptbb", dest=tmp_path)


def test_resolve_missing_corpus_says_fetch_then_downloads_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.delenv(corpora.MIRROR_ENV, raising=False)
    monkeypatch.setenv(corpora.CACHE_ENV, str(tmp_path / "cache"))
    server.routes = {"/plain.txt": TEXT}
    spec = _spec(RemoteFile("plain.txt", server.url("/plain.txt"), sha(TEXT), len(TEXT)))
    monkeypatch.setitem(corpora.REGISTRY, spec.name, spec)
    assert "test-corpus" in tables.format_corpus_table()
    with pytest.raises(CorpusError, match="lmgen corpus fetch test-corpus"):
        corpora.resolve("test-corpus")
    corpus = corpora.resolve("test-corpus", download=True)
    assert corpus.location == "cache" and corpus.paths == [tmp_path / "cache" / "test-corpus" / "plain.txt"]
    assert corpora.resolve("test-corpus").text("train") == TEXT.decode()[: int(len(TEXT) * 0.9)]
    assert len(server.requests) == 1
    (corpus.paths[0]).write_bytes(TEXT[:-1])
    with pytest.raises(CorpusError, match="expected .* bytes.*lmgen corpus fetch"):
        corpora.resolve("test-corpus")


def test_blank_separator_corpus_from_a_mirror(tmp_path, monkeypatch):
    folder = tmp_path / "paras"
    folder.mkdir()
    (folder / "p.txt").write_text("one\ntwo\n\n\n  \nthree\n\nfour\n" * 300)
    spec = CorpusSpec(
        name="paras", description="paragraphs", folder="paras",
        files=(RemoteFile("p.txt", None, None, None),),
        split="chars", fractions=(0.8, 0.2, 0.0), separator="blank",
    )
    monkeypatch.setitem(corpora.REGISTRY, "paras", spec)
    corpus = corpora.resolve("paras", mirror=tmp_path)
    assert corpus.location == "mirror" and corpus.splits == ("train", "valid")
    docs = list(corpus.documents("train"))
    assert docs[:3] == ["one\ntwo", "three", "four\none\ntwo"]
    assert corpus.text("train").startswith("one\ntwo\nthree\nfour\none\ntwo\n")
