"""A writer's files around sampling: a prompt read from a file or stdin
(:func:`read_prompt`), and files written whole or not at all (:func:`write_text`):
``lmgen sample --out``'s records and the REPL's ``:save``.

Every refusal is a :class:`~lmgen.errors.ConfigError` naming the flag and the file, so
the command line prints one line, never a traceback.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError

# As much as one --prompt argument can carry on Linux (MAX_ARG_STRLEN, 32 pages), so a file
# is refused only where the same text on the command line would have been.
MAX_PROMPT_BYTES = 128 * 1024


def read_prompt(source: str | Path, flag: str = "--prompt-file", stdin: BinaryIO | None = None) -> str:
    """The prompt in file ``source`` (``"-"``: standard input), UTF-8.

    A byte-order mark and one final line break are dropped: editors add them, and a
    continuation should go on from the last line, not below it (end the file with an
    empty line to keep one). At most :data:`MAX_PROMPT_BYTES`.

    >>> read_prompt("letter.txt")                                       # doctest: +SKIP
    'Dear Anna,'
    """
    if str(source) == "-":
        where = "stdin"
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise ConfigError(f"{flag} -: standard input is closed; pipe the prompt in or give a file")
        try:
            data = stream.read(MAX_PROMPT_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{flag} -: cannot read standard input ({exc.strerror or exc})") from None
    else:
        path = Path(source).expanduser()
        where = str(source)
        if path.is_dir():
            raise ConfigError(f"{flag} {source} is a folder; name the text file with the prompt")
        try:
            with open(path, "rb") as f:  # a FIFO (--prompt-file <(command)) is fine: the read is capped
                data = f.read(MAX_PROMPT_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(f"{flag} {source}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{flag} {source} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise ConfigError(f"{flag} {where}: the prompt is over {MAX_PROMPT_BYTES:,} bytes; keep its last part, "
                          f"e.g. tail -c 100000 FILE > end.txt")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag} {where} is not UTF-8 text (byte {exc.start:,} is {data[exc.start]:#04x}); "
                          "convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8") from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def check_output(target: str | Path, flag: str) -> Path:
    """``target`` as a file that can be written: not a folder or a device, in a folder that exists.

    Checked before any work, so a typo costs nothing.
    """
    path = Path(target).expanduser()
    if str(target).endswith(("/", os.sep)) or path.is_dir():
        raise ConfigError(f"{flag} {target} is a folder; name a file in it, e.g. {path / 'samples.jsonl'}")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise ConfigError(f"{flag} {target} exists and is not a regular file; name another file")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {target}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {target}: the folder {folder} is not writable")
    return path


def write_text(target: str | Path, text: str, flag: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically: a reader, or a crash, sees the old
    file or the new one, never half of it. Returns the path written."""
    path = check_output(target, flag)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)  # keep an existing file's permissions
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # as open() would create it (mkstemp makes 0600)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{flag} {target} cannot be written ({exc.strerror or exc})") from None
    except BaseException:  # Ctrl-C mid-write: leave no temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
