"""Corpus files checked by content: sha256 against the registry, hashed once per version.

Every registry file read from the mirror or the cache is verified by sha256 before it is
used, so a same-size altered copy is refused instead of trained on (and can never reach
the token caches, which are keyed by the verified content hash). Hashing 100 MB takes
~0.3 s; to pay that once, the hash is recorded in the cache folder, never in the mirror:

    $LMGEN_CACHE/verified/<file name>.<sha256 of its absolute path>.json
        {"path": ..., "stamp": [size, mtime_ns, ctime_ns, inode], "sha256": ...}

A record is trusted only while the file's stamp is unchanged. The stamp holds ctime and
the inode besides size and mtime because mtime can be set back (``touch -r``, ``cp -p``)
and ctime cannot: any write or replacement of the file means one fresh hash.

    >>> sha, stamp = content_sha256(Path("input.txt"))   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from lmgen.cache import cache_folder
from lmgen.errors import CorpusError

from .reading import sha256_file
from .registry import MIRROR_ENV, CorpusSpec, RemoteFile

RECORD_FORMAT = "lmgen-verified/1"
RECORDS = "verified"  # the sub-folder of the cache folder

Stamp = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
Verified = tuple[str, Stamp]  # the content's sha256, and the stamp of the file it came from


def stamp(path: Path) -> Stamp:
    """What changes whenever a file's content may have: size, mtime_ns, ctime_ns, inode."""
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _record_path(path: Path) -> Path:
    where = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_folder() / RECORDS / f"{path.name}.{where}.json"


def _recorded(path: Path, now: Stamp) -> str | None:
    """The recorded sha256 of ``path`` if its record matches the stamp ``now``, else None."""
    try:
        record = json.loads(_record_path(path).read_text(encoding="utf-8"))
        sha = record["sha256"]
        ok = (
            record["format"] == RECORD_FORMAT
            and record["path"] == str(path.resolve())
            and tuple(record["stamp"]) == now
            and isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record, or a damaged one: hash again
    return sha if ok else None


def remember(path: Path, sha256: str, at: Stamp) -> None:
    """Record that ``path``, as of stamp ``at``, has content ``sha256`` (best effort).

    Written atomically; a cache folder that cannot be written only costs a re-hash later.
    """
    target = _record_path(path)
    record = {"format": RECORD_FORMAT, "path": str(path.resolve()), "stamp": list(at), "sha256": sha256}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def content_sha256(path: Path, *, expected: str | None = None, record: bool = True) -> Verified:
    """The sha256 of ``path``'s content and the stamp it belongs to.

    From the record when the file's stamp is unchanged (and, given ``expected``, the record
    says that hash: a mismatch is always confirmed by reading the file), else hashed and
    recorded when ``record``. The stamp is taken before reading: a file that changes while
    it is hashed then no longer matches it, so its record is never trusted.
    """
    before = stamp(path)
    known = _recorded(path, before)
    if known is not None and expected in (None, known):
        return known, before
    sha = sha256_file(path)
    if record and stamp(path) == before:
        remember(path, sha, before)
    return sha, before


def verify_file(spec: CorpusSpec, rf: RemoteFile, path: Path, location: str) -> Verified:
    """Check a registry file's size and sha256; return its (sha256, stamp).

    ``location`` ("mirror" or "cache") picks the advice. A file without a registry sha256
    is hashed all the same, so what it holds still keys the token caches.
    """
    actual = path.stat().st_size
    if rf.size is not None and actual != rf.size:
        raise CorpusError(
            f"{path} has {actual:,} bytes, expected {rf.size:,} bytes: it is damaged or a different "
            f"version. {_advice(spec, rf, location)}"
        )
    sha, at = content_sha256(path, expected=rf.sha256)
    if rf.sha256 is not None and sha != rf.sha256:
        raise CorpusError(
            f"{path} does not have the content of corpus {spec.name!r}: sha256 expected {rf.sha256}, "
            f"found {sha}; it was not used. {_advice(spec, rf, location)}"
        )
    return sha, at


def _advice(spec: CorpusSpec, rf: RemoteFile, location: str) -> str:
    """What to do about a bad copy: one sentence."""
    fix_mirror = f"Fix the mirror (restore {spec.folder}/{rf.name} from its source, see SOURCES.md)"
    if location == "mirror" and rf.url is None:
        return fix_mirror
    if location == "mirror":
        return (
            f"{fix_mirror}, or unset {MIRROR_ENV} and run `lmgen corpus fetch {spec.name}` to "
            f"download it into the cache"
        )
    if rf.url is None:
        return f"Run `lmgen corpus fetch {spec.name} --mirror DIR` with a good mirror to replace it"
    return f"Run `lmgen corpus fetch {spec.name}` to fetch it again"


def check_unchanged(name: str, verified: dict[Path, Verified]) -> None:
    """Refuse if a file changed since its hash was taken: one stat per file.

    A file whose stamp moved is hashed again; only a different content is refused, so a
    token cache is never written from text that is not the one its key names.
    """
    for path, (sha, at) in verified.items():
        try:
            if stamp(path) == at:
                continue
            now, _ = content_sha256(path, record=False)
        except OSError as e:
            raise CorpusError(f"{path} of corpus {name!r} vanished while it was read ({e}); run again") from e
        if now != sha:
            raise CorpusError(
                f"{path} of corpus {name!r} changed while it was read (sha256 {sha} became {now}); "
                f"nothing was cached from it: run again once the file stays put"
            )
