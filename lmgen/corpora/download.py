"""Getting a named corpus's files onto this machine, verified.

The files of a named corpus are looked for in two folders, in order, each laid out as
``<folder>/<corpus folder>/<file>``:

    mirror   ``mirror=`` or $LMGEN_CORPORA: a shared, read-only copy (no network needed)
    cache    $LMGEN_CACHE or ~/.cache/lmgen: where :func:`fetch` puts what it gets

:func:`fetch` copies each missing file from the mirror or downloads it (unpacking zip or
bz2 archives), checks its size and sha256, and only then renames it into place. Downloads
and unpacking stop as soon as the output passes the registry's size (or MAX_FILE_BYTES
when it is unknown): a 466-byte bz2 bomb never writes more than that.
"""

from __future__ import annotations

import bz2
import http.client
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from lmgen.cache import cache_folder
from lmgen.errors import CorpusError

from .reading import sha256_file
from .registry import MIRROR_ENV, REGISTRY, CorpusSpec, RemoteFile, did_you_mean
from .verify import content_sha256, remember, stamp

# Seconds without a byte from the server before a download gives up.
DOWNLOAD_TIMEOUT_S = 60
# The most bytes a download or an unpacked archive may write when the registry gives no
# size: far above any corpus here (enwik9 is 1 GB), far below a bomb that fills the disk.
MAX_FILE_BYTES = 8 << 30

Place = tuple[str, Path | None]  # ("mirror" | "cache", its folder, None when unset)


def mirror_folder() -> Path | None:
    """The local mirror folder from $LMGEN_CORPORA, or None when unset or missing."""
    value = os.environ.get(MIRROR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_dir() else None


def _mirror_root(mirror: str | os.PathLike | None) -> Path | None:
    return Path(mirror).expanduser() if mirror is not None else mirror_folder()


def local_places(mirror: str | os.PathLike | None = None) -> list[Place]:
    """Where a named corpus's files are looked for, in order: the mirror, then the cache."""
    return [("mirror", _mirror_root(mirror)), ("cache", cache_folder())]


def find_local(spec: CorpusSpec, places: list[Place]) -> tuple[str, Path] | None:
    """The first place holding every file of ``spec``: (location, corpus folder), or None."""
    for location, root in places:
        if root is not None and all((root / spec.folder / f.name).is_file() for f in spec.files):
            return location, root / spec.folder
    return None


class _Progress:
    """One stderr line per file, rewritten at most 5 times a second."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.last = label, enabled, 0.0

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        of = f" / {human_size(total)}" if total else ""
        print(f"\r  {self.label}: {human_size(done)}{of}   ", end="", file=sys.stderr, flush=True)

    def done(self, message: str) -> None:
        if self.enabled:
            print(f"\r  {self.label}: {message}   ", file=sys.stderr, flush=True)


def human_size(n: int | None) -> str:
    """A byte count for people: "1.1 MB", "512 B", "?" when unknown."""
    if n is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _download(url: str, out: BinaryIO, progress: _Progress, expected: int | None, limit: int) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "lmgen"})
    got, declared = 0, None
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            while block := response.read(1 << 16):
                got += len(block)
                if got > limit:
                    raise CorpusError(
                        f"the download of {url} passed {limit:,} bytes, more than the file can be; "
                        f"stopped and removed it. The server sends something else: use a mirror ({MIRROR_ENV})"
                    )
                out.write(block)
                progress.update(got, declared or expected)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = getattr(e, "reason", None) or e
        raise CorpusError(
            f"could not download {url}: {reason}; check the network and run the command again, "
            f"or copy the file into a mirror folder and set {MIRROR_ENV}"
        ) from e
    if declared is not None and got != declared:
        raise CorpusError(
            f"the download of {url} stopped after {got:,} of {declared:,} bytes; run the command again"
        )


def _verify(path: Path, sha256: str | None, size: int | None, what: str) -> str:
    """Check a fetched file's size and sha256; return its sha256."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise CorpusError(
            f"{what}: got {actual_size:,} bytes, expected {size:,}; the download was cut short or the "
            f"upstream file changed; run the command again, or use a mirror ({MIRROR_ENV})"
        )
    actual = sha256_file(path)
    if sha256 is None:
        print(
            f"warning: {what} has no sha256 in the registry, so it was not verified; "
            f"its sha256 is {actual}",
            file=sys.stderr,
        )
    elif actual != sha256:
        raise CorpusError(
            f"{what}: sha256 mismatch, expected {sha256}, got {actual}; the file was removed. "
            f"The upstream file changed or the download is corrupt: run the command again, or use "
            f"a mirror ({MIRROR_ENV})"
        )
    return actual


def _unpack(archive: str, src: Path, out: BinaryIO, what: str, cap: int) -> None:
    """Decompress ``src`` into ``out``, refusing as soon as more than ``cap`` bytes come out.

    The cap is checked per 1 MiB block, so at most ``cap`` bytes are ever written; the
    caller deletes the partial output.
    """
    try:
        if archive == "bz2":
            with bz2.open(src, "rb") as f:
                _copy_capped(f, out, cap, what, archive)
        elif archive.startswith("zip:"):
            with zipfile.ZipFile(src) as z:
                declared = z.getinfo(archive[4:]).file_size
                if declared > cap:  # the header's claim, refused before inflating anything
                    raise _bomb(what, archive, cap, f"its header declares {declared:,} bytes")
                with z.open(archive[4:]) as f:
                    _copy_capped(f, out, cap, what, archive)
        else:
            raise AssertionError(f"unknown archive kind {archive!r}")
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CorpusError(
            f"{what}: cannot unpack the downloaded {archive} archive ({e}); run the command again"
        ) from e


def _copy_capped(src: BinaryIO, out: BinaryIO, cap: int, what: str, archive: str) -> None:
    done = 0
    while block := src.read(1 << 20):  # decompressors return at most this much at once
        done += len(block)
        if done > cap:
            raise _bomb(what, archive, cap, "it unpacks to more")
        out.write(block)


def _bomb(what: str, archive: str, cap: int, why: str) -> CorpusError:
    return CorpusError(
        f"{what}: the downloaded {archive} archive is refused: the file should be at most {cap:,} "
        f"bytes but {why} (a decompression bomb, or the wrong file); nothing was kept. Use a "
        f"mirror ({MIRROR_ENV}) or check the registry's URL"
    )


def _temp(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def _file_ok(path: Path, rf: RemoteFile) -> bool:
    if rf.size is not None and path.stat().st_size != rf.size:
        return False
    return rf.sha256 is None or content_sha256(path, expected=rf.sha256)[0] == rf.sha256


def fetch(
    name: str | CorpusSpec,
    *,
    dest: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Put every file of a registry corpus into ``dest/<folder>/`` and return that folder.

    ``dest`` defaults to the cache folder. A file already there with the right sha256 is
    kept; one the mirror (``mirror`` or $LMGEN_CORPORA) has is copied; others are
    downloaded. Each is written to a temporary file in the same folder, checked against
    its size and sha256, then renamed, so no half-written file is ever left behind (not
    on a bad checksum, a dropped connection or Ctrl-C).

        >>> fetch("tinyshakespeare")             # doctest: +SKIP
        PosixPath('/home/me/.cache/lmgen/tinyshakespeare')
    """
    spec = _fetchable(name)
    mirror_root = _mirror_root(mirror)
    folder = Path(dest).expanduser() if dest is not None else cache_folder()
    folder = folder / spec.folder
    _check_sources(spec, folder, mirror_root)
    folder.mkdir(parents=True, exist_ok=True)
    for rf in spec.files:
        target = folder / rf.name
        what = f"{spec.name}/{rf.name}"
        bar = _Progress(what, progress)
        if target.is_file() and _file_ok(target, rf):
            bar.done("present, sha256 ok")
            continue
        source = mirror_root / spec.folder / rf.name if mirror_root else None
        how = _fetch_file(rf, target, source, what, bar)
        bar.done(f"{human_size(target.stat().st_size)}, sha256 ok, {how}")
    return folder


def _fetchable(name: str | CorpusSpec) -> CorpusSpec:
    """The spec of a registry corpus that has files to fetch."""
    if isinstance(name, CorpusSpec):
        spec = name
    elif name in REGISTRY:
        spec = REGISTRY[name]
    else:
        hint = did_you_mean(str(name))
        raise CorpusError(f"unknown corpus {name!r}.{hint} Known corpora: {', '.join(REGISTRY)}")
    if spec.builtin:
        raise CorpusError(f"corpus {spec.name!r} is built in and needs no fetching; use it directly")
    return spec


def _check_sources(spec: CorpusSpec, folder: Path, mirror_root: Path | None) -> None:
    """Refuse before writing anything when a file has no URL and no local copy."""
    missing = [
        f for f in spec.files
        if f.url is None and not (mirror_root and (mirror_root / spec.folder / f.name).is_file())
        and not (folder / f.name).is_file()
    ]
    if missing:
        raise CorpusError(
            f"corpus {spec.name!r} has no download URL for {', '.join(f.name for f in missing)}: "
            f"get the files from a corpora mirror and set {MIRROR_ENV}=DIR to the folder holding "
            f"{spec.folder}/ (or pass --mirror DIR)"
        )


def _fetch_file(rf: RemoteFile, target: Path, source: Path | None, what: str, bar: _Progress) -> str:
    """Write one file to ``target`` from the mirror or the network; say how it came."""
    folder = target.parent
    cap = rf.size if rf.size is not None else MAX_FILE_BYTES
    temps = [_temp(folder, rf.name)]
    try:
        with open(temps[0], "wb") as out:
            if source is not None and source.is_file() and source.resolve() != target.resolve():
                if rf.size is not None and source.stat().st_size != rf.size:
                    raise CorpusError(
                        f"{source} has {source.stat().st_size:,} bytes, expected {rf.size:,}: the mirror's "
                        f"copy is damaged or a different version; fix the mirror, or unset {MIRROR_ENV} to download"
                    )
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                how = f"copied from {source}"
            elif rf.url is None:
                raise CorpusError(f"{what} has no download URL; set {MIRROR_ENV} to a corpora mirror")
            elif rf.archive is None:
                _download(rf.url, out, bar, rf.size, cap)
                how = f"downloaded from {rf.url}"
            else:
                temps.append(_temp(folder, rf.name + ".archive"))
                with open(temps[1], "wb") as arc:
                    _download(rf.url, arc, bar, None, MAX_FILE_BYTES)
                _verify(temps[1], rf.archive_sha256, None, f"{what} ({rf.archive} archive)")
                _unpack(rf.archive, temps[1], out, what, cap)
                how = f"downloaded and unpacked from {rf.url}"
        sha = _verify(temps[0], rf.sha256, rf.size, what)
        os.replace(temps[0], target)
        remember(target, sha, stamp(target))  # so resolving it next does not hash it again
    except BaseException:  # also Ctrl-C: never leave a partial file behind
        for t in temps:
            t.unlink(missing_ok=True)
        if bar.enabled:
            print(file=sys.stderr)  # end the progress line before the traceback or error
        raise
    for t in temps[1:]:
        t.unlink(missing_ok=True)
    return how
