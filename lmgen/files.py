"""Reading files we did not write: checkpoints, tokenizers and archives handed to us.

A checkpoint folder may come from anywhere, so nothing in it is trusted until checked, and
every check runs *before* anything large is read or allocated:

* only regular files are read (a FIFO would block forever, a device such as /dev/zero
  never ends), and a symbolic link must stay inside its folder;
* every file has a size cap, checked on the open descriptor before reading;
* JSON is parsed with a nesting limit (deep nesting would end in a RecursionError);
* a zip archive (``torch.save``'s format) is refused when its members would unpack to
  more than a cap, before ``torch.load`` allocates them.

Each refusal is a :class:`~lmgen.errors.CheckpointError` whose message names the file.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MAX_JSON_DEPTH = 64  # lmgen's own files nest 3 deep


def open_regular(path: Path, cap: int, what: str = "file") -> int:
    """An O_RDONLY descriptor of ``path``: a regular file of at most ``cap`` bytes inside its folder."""
    folder = path.parent.resolve()
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise CheckpointError(f"{path} cannot be opened ({exc})") from None
    if real.parent != folder:
        raise CheckpointError(f"refusing {path}: it is a link to {real}, outside its checkpoint folder")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what it is.
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be opened ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"refusing {path}: the {what} is not a regular file")
    if info.st_size > cap:
        os.close(fd)
        raise CheckpointError(f"refusing {path}: the {what} is {info.st_size:,} bytes, over the {cap:,}-byte limit")
    return fd


def read_capped(path: Path, cap: int, what: str = "file") -> bytes:
    """The bytes of ``path`` after :func:`open_regular`'s checks (never more than ``cap``)."""
    fd = open_regular(path, cap, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:  # grew since fstat
        raise CheckpointError(f"refusing {path}: the {what} is over the {cap:,}-byte limit")
    return data


def _depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json(path: Path, cap: int, what: str = "file") -> Any:
    """Parse a capped, regular JSON file; too deep a nesting is refused before parsing."""
    data = read_capped(path, cap, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is unreadable or not JSON ({exc}); the checkpoint is damaged") from None
    # Cheap before the parse: brackets are rare in lmgen's files, so this scans fast.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise CheckpointError(f"refusing {path}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path} is unreadable or not JSON ({exc}); the checkpoint is damaged") from None


def check_archive(path: Path, cap: int, what: str = "file") -> None:
    """Refuse a zip archive whose members would unpack to more than ``cap`` bytes.

    ``torch.load`` allocates each member at the size its directory entry declares, so
    summing the declared sizes bounds what loading can take; a compressed member is
    refused outright (``torch.save`` never compresses, a zip bomb must).
    """
    fd = open_regular(path, cap, what)
    try:
        with os.fdopen(fd, "rb") as f, zipfile.ZipFile(f) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupted ({exc})") from None
    total = sum(m.file_size for m in members)
    if total > cap:
        raise CheckpointError(f"refusing {path}: the {what} would unpack to {total:,} bytes, over the "
                              f"{cap:,}-byte limit for this checkpoint")
    packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(f"refusing {path}: the {what} holds compressed members ({packed[0]}), "
                              "which torch.save never writes")


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
