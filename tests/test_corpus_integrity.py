"""Corpus integrity: registry files verified by sha256, token caches keyed by content, bounded unpacking.

Real files throughout: a copy of the mirror's tinyshakespeare with one byte changed, real
bz2 and zip bombs, the real hash function (wrapped only to count its calls).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lmgen import corpora
from lmgen.corpora import CorpusSpec, RemoteFile, download, verify
from lmgen.data import encode_split, prepare_tokenizer
from lmgen.errors import CorpusError

SHAKESPEARE = corpora.REGISTRY["tinyshakespeare"].files[0]  # input.txt, 1,115,394 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(corpora.CACHE_ENV, str(folder))
    return folder


def _copy_shakespeare(mirror: Path, root: Path) -> Path:
    """A writable copy of the mirror's tinyshakespeare under ``root``; its input.txt."""
    shutil.copytree(mirror / "tinyshakespeare", root / "tinyshakespeare")
    path = root / "tinyshakespeare" / "input.txt"
    path.chmod(0o644)  # copytree keeps the mirror's read-only mode
    return path


def _flip_one_byte(path: Path, at: int = 1000) -> None:
    """Change one letter's case in place: same size, different content."""
    data = bytearray(path.read_bytes())
    assert chr(data[at]).isalpha()
    data[at] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.fixture
def poisoned(mirror, tmp_path) -> Path:
    """input.txt of a mirror copy whose tinyshakespeare differs from the real one by one byte."""
    path = _copy_shakespeare(mirror, tmp_path / "poisoned")
    _flip_one_byte(path)
    assert path.stat().st_size == SHAKESPEARE.size
    return path


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _token_cache(cache: Path) -> dict[str, bytes]:
    return {**_files(cache / "tokens"), **{f"tok/{k}": v for k, v in _files(cache / "tokenizers").items()}}


def _encode_all(corpus) -> dict[str, np.ndarray]:
    tok = prepare_tokenizer(corpus, "char")
    return {s: np.array(encode_split(corpus, tok, s).tokens) for s in corpus.splits}


# --------------------------------------------------------------------------- poisoned mirror


def test_a_poisoned_mirror_is_refused_and_never_reaches_the_token_cache(mirror, poisoned, cache, monkeypatch):
    found = sha(poisoned.read_bytes())
    monkeypatch.setenv(corpora.MIRROR_ENV, str(poisoned.parents[1]))
    # The altered copy first, on an empty cache (the order that poisoned it before).
    with pytest.raises(CorpusError) as err:
        corpora.resolve("tinyshakespeare")
    message = str(err.value)
    assert str(poisoned) in message
    assert f"expected {SHAKESPEARE.sha256}" in message and f"found {found}" in message
    assert "Fix the mirror" in message and "lmgen corpus fetch tinyshakespeare" in message
    assert _token_cache(cache) == {}

    # A good run fills the token cache ...
    monkeypatch.setenv(corpora.MIRROR_ENV, str(mirror))
    good = corpora.resolve("tinyshakespeare")
    real = _encode_all(good)
    before = _token_cache(cache)
    assert any(name.endswith(".bin") for name in before)

    # ... which a later poisoned run cannot touch, however often it tries (the recorded hash
    # of the altered file is its own, not a pass).
    monkeypatch.setenv(corpora.MIRROR_ENV, str(poisoned.parents[1]))
    for _ in range(2):
        with pytest.raises(CorpusError, match=f"expected {SHAKESPEARE.sha256}, found {found}"):
            corpora.resolve("tinyshakespeare")
    assert _token_cache(cache) == before

    # The real mirror again: the real tokens, equal to encoding the real text afresh.
    monkeypatch.setenv(corpora.MIRROR_ENV, str(mirror))
    again = corpora.resolve("tinyshakespeare")
    assert again.fingerprint == good.fingerprint
    tokens = _encode_all(again)
    tok = prepare_tokenizer(again, "char")
    for split in again.splits:
        fresh = np.append(tok.encode_array(again.text(split)), tok.end_id)
        assert np.array_equal(tokens[split], real[split]) and np.array_equal(tokens[split], fresh)


def test_training_on_a_poisoned_mirror_is_one_clear_line(poisoned, cache, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               LMGEN_CORPORA=str(poisoned.parents[1]), LMGEN_CACHE=str(cache))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lmgen", "train", "--corpus", "tinyshakespeare", "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(poisoned) in lines[0] and SHAKESPEARE.sha256 in lines[0]
    assert sha(poisoned.read_bytes()) in lines[0]
    assert _token_cache(cache) == {}
    assert not list(out.rglob("*.safetensors"))


def test_a_file_changed_while_it_is_encoded_is_not_cached(mirror, tmp_path, cache, monkeypatch):
    path = _copy_shakespeare(mirror, tmp_path / "copy")
    monkeypatch.setenv(corpora.MIRROR_ENV, str(tmp_path / "copy"))
    corpus = corpora.resolve("tinyshakespeare")  # verified: the real content
    tok = prepare_tokenizer(corpus, "char")
    before = _token_cache(cache)
    _flip_one_byte(path)  # altered after it was verified, before it is read
    with pytest.raises(CorpusError, match=rf"{path} of corpus 'tinyshakespeare' changed while it was read"):
        encode_split(corpus, tok, "valid")
    assert _token_cache(cache) == before  # no token file under the real content's key


def test_a_damaged_cache_copy_is_refused_then_fetch_repairs_it(mirror, tmp_path, cache, monkeypatch):
    good_mirror = tmp_path / "good"
    _copy_shakespeare(mirror, good_mirror)
    corpora.fetch("tinyshakespeare", mirror=good_mirror, progress=False)
    monkeypatch.delenv(corpora.MIRROR_ENV, raising=False)
    cached = cache / "tinyshakespeare" / "input.txt"
    assert corpora.resolve("tinyshakespeare").location == "cache"
    _flip_one_byte(cached)
    with pytest.raises(CorpusError) as err:
        corpora.resolve("tinyshakespeare")
    assert str(cached) in str(err.value) and SHAKESPEARE.sha256 in str(err.value)
    assert "Run `lmgen corpus fetch tinyshakespeare` to fetch it again" in str(err.value)
    corpora.fetch("tinyshakespeare", mirror=good_mirror, progress=False)  # re-hashes, sees it, replaces it
    assert sha(cached.read_bytes()) == SHAKESPEARE.sha256
    assert corpora.resolve("tinyshakespeare").location == "cache"


# --------------------------------------------------------------------------- hashed once per version


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    """Every file the verification hashes: the real sha256_file, wrapped to count its calls."""
    calls: list[Path] = []
    real = verify.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(verify, "sha256_file", counting)
    return calls


def test_a_verified_hash_is_reused_until_the_file_changes(mirror, tmp_path, cache, monkeypatch, hash_calls):
    path = _copy_shakespeare(mirror, tmp_path / "copy")
    monkeypatch.setenv(corpora.MIRROR_ENV, str(tmp_path / "copy"))
    first = corpora.resolve("tinyshakespeare")
    assert hash_calls == [path]
    # The record lies in the cache folder, never in the mirror.
    assert sorted(p.name for p in path.parent.iterdir()) == ["input.txt"]
    assert len(list((cache / verify.RECORDS).glob("input.txt.*.json"))) == 1

    # Later resolves (each reads the record from disk, as a new run would) hash nothing.
    for _ in range(3):
        corpus = corpora.resolve("tinyshakespeare")
        assert corpus.fingerprint == first.fingerprint
        corpus.check_unchanged()
    assert hash_calls == [path]

    # A new mtime means one fresh hash; the same content is accepted.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    corpora.resolve("tinyshakespeare")
    corpora.resolve("tinyshakespeare")
    assert hash_calls == [path, path]

    # Altered, with its size and mtime set back: ctime still moved, so it is hashed and refused.
    st = path.stat()
    _flip_one_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorpusError, match="sha256 expected"):
        corpora.resolve("tinyshakespeare")
    assert hash_calls == [path, path, path]


def test_fetch_records_the_hash_so_resolve_does_not_hash_again(mirror, tmp_path, cache, monkeypatch, hash_calls):
    good_mirror = tmp_path / "good"
    _copy_shakespeare(mirror, good_mirror)
    corpora.fetch("tinyshakespeare", mirror=good_mirror, progress=False)
    monkeypatch.delenv(corpora.MIRROR_ENV, raising=False)
    assert corpora.resolve("tinyshakespeare").location == "cache"
    assert hash_calls == []


def test_a_damaged_record_or_an_unwritable_cache_only_costs_a_hash(mirror, tmp_path, cache, monkeypatch, hash_calls):
    path = _copy_shakespeare(mirror, tmp_path / "copy")
    monkeypatch.setenv(corpora.MIRROR_ENV, str(tmp_path / "copy"))
    corpora.resolve("tinyshakespeare")
    (record,) = (cache / verify.RECORDS).glob("input.txt.*.json")
    record.write_text('{"format": "lmgen-verified/1", "sha256": [')
    corpora.resolve("tinyshakespeare")
    assert hash_calls == [path, path]
    corpora.resolve("tinyshakespeare")
    assert hash_calls == [path, path]  # the rewritten record is used
    # A record that contradicts the registry is checked by reading the file, not believed.
    record.write_text(record.read_text().replace(SHAKESPEARE.sha256, "0" * 64))
    corpora.resolve("tinyshakespeare")
    assert hash_calls == [path] * 3
    monkeypatch.setenv(corpora.CACHE_ENV, str(path))  # "under a file": no record can be written
    corpora.resolve("tinyshakespeare")
    corpora.resolve("tinyshakespeare")
    assert hash_calls == [path] * 5


# --------------------------------------------------------------------------- bounded unpacking


class _Sink:
    """A file-like object that keeps only the count of bytes written to it."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, block: bytes) -> int:
        self.written += len(block)
        return len(block)


def _bz2_multistream_bomb(total: int, block: int = 8 << 20) -> bytes:
    """About ``total`` zero bytes as concatenated bz2 streams: ~50 bytes per 8 MiB, built at once."""
    return bz2.compress(b"\0" * block) * (total // block)


def _bz2_single_stream_bomb(total: int, block: int = 8 << 20) -> bytes:
    """``total`` zero bytes as one bz2 stream, compressed in blocks (~0.1 s per 16 MiB)."""
    c = bz2.BZ2Compressor(9)
    zeros = b"\0" * block
    parts = [c.compress(zeros) for _ in range(total // block)]
    return b"".join(parts) + c.flush()


@pytest.mark.parametrize("bomb", [
    lambda: _bz2_multistream_bomb(700_000_000),  # 4 KB that unpack to 696 MB
    lambda: _bz2_single_stream_bomb(64 << 20),  # ~100 bytes that unpack to 64 MiB
], ids=["multistream-700MB", "single-stream-64MiB"])
def test_a_bz2_bomb_is_refused_after_at_most_its_cap(tmp_path, bomb):
    src = tmp_path / "bomb.bz2"
    src.write_bytes(bomb())
    assert src.stat().st_size < 5000
    sink, cap = _Sink(), 1_000_000
    start = time.monotonic()
    with pytest.raises(CorpusError, match="at most 1,000,000 bytes but it unpacks to more.*decompression bomb"):
        download._unpack("bz2", src, sink, "bomb", cap)
    assert sink.written <= cap
    assert time.monotonic() - start < 5


def test_fetch_of_a_bz2_bomb_stops_at_the_registry_size_and_leaves_nothing(tmp_path):
    src = tmp_path / "bomb.bz2"
    src.write_bytes(_bz2_multistream_bomb(700_000_000))
    spec = CorpusSpec(
        name="bomb", description="test", folder="bomb",
        files=(RemoteFile("bomb.txt", src.as_uri(), sha(b"x" * 1000), 1000, archive="bz2"),),
        split="chars", fractions=(0.9, 0.05, 0.05),
    )
    start = time.monotonic()
    with pytest.raises(CorpusError, match="at most 1,000 bytes"):
        corpora.fetch(spec, dest=tmp_path / "cache", mirror=tmp_path / "no-mirror", progress=False)
    assert time.monotonic() - start < 5
    assert list((tmp_path / "cache" / "bomb").iterdir()) == []


def test_without_a_registry_size_the_cap_is_max_file_bytes(tmp_path, monkeypatch):
    src = tmp_path / "bomb.bz2"
    src.write_bytes(_bz2_multistream_bomb(100 << 20))
    monkeypatch.setattr(download, "MAX_FILE_BYTES", 4 << 20)
    spec = CorpusSpec(
        name="bomb", description="test", folder="bomb",
        files=(RemoteFile("bomb.txt", src.as_uri(), None, None, archive="bz2"),),
        split="chars", fractions=(0.9, 0.05, 0.05),
    )
    with pytest.raises(CorpusError, match=f"at most {4 << 20:,} bytes"):
        corpora.fetch(spec, dest=tmp_path / "cache", mirror=tmp_path / "no-mirror", progress=False)
    assert list((tmp_path / "cache" / "bomb").iterdir()) == []


def test_a_zip_member_larger_than_the_cap_is_refused_before_inflating(tmp_path):
    src = tmp_path / "bomb.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner.txt", b"\0" * (16 << 20))
    sink = _Sink()
    with pytest.raises(CorpusError, match="header declares 16,777,216 bytes"):
        download._unpack("zip:inner.txt", src, sink, "zip bomb", 1_000_000)
    assert sink.written == 0


def test_a_download_longer_than_the_registry_size_is_cut_off(tmp_path):
    src = tmp_path / "long.txt"
    src.write_bytes(b"a" * 300_000)
    spec = CorpusSpec(
        name="long", description="test", folder="long",
        files=(RemoteFile("long.txt", src.as_uri(), sha(b"a" * 1000), 1000),),
        split="chars", fractions=(0.9, 0.05, 0.05),
    )
    with pytest.raises(CorpusError, match="passed 1,000 bytes"):
        corpora.fetch(spec, dest=tmp_path / "cache", mirror=tmp_path / "no-mirror", progress=False)
    assert list((tmp_path / "cache" / "long").iterdir()) == []


def test_unpacking_within_the_cap_is_unchanged():
    data = b"It was the best of times.\n" * 5000
    src_buf = io.BytesIO(bz2.compress(data))
    out = io.BytesIO()
    download._copy_capped(bz2.BZ2File(src_buf), out, len(data), "ok", "bz2")
    assert out.getvalue() == data
