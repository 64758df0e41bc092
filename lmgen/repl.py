"""``lmgen repl``: the interactive loop. I/O only; the logic is :class:`lmgen.sampling.session.Session`.

Line editing and history come from ``readline`` (history in ``$LMGEN_CACHE/repl_history``
when that is set, else ``~/.lmgen_history``). Ctrl-C stops a generation (or clears the
line being typed) and returns to the prompt; Ctrl-D on an empty line quits.

>>> run(model, tokenizer, GenerationConfig(), seed=0)                  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from .cache import CACHE_ENV, cache_folder
from .config import GenerationConfig
from .errors import LmgenError
from .sampling.session import REPL_HELP, Session

PROMPT = "lmgen> "


def history_path() -> Path:
    """Where the line history is kept between sessions."""
    # Only inside an explicitly chosen cache (tests, sandboxes); a user's history stays in ~.
    return cache_folder() / "repl_history" if os.environ.get(CACHE_ENV) else Path.home() / ".lmgen_history"


def _setup_readline() -> Any:
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        return None
    path = history_path()
    try:
        readline.read_history_file(path)
    except (FileNotFoundError, OSError):
        pass
    readline.set_history_length(1000)
    return readline


def _save_history(readline: Any) -> None:
    if readline is None:
        return
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError as exc:
        print(f"note: could not save the history to {path} ({exc.strerror})", file=sys.stderr)


def run(model: Any, tokenizer: Any, config: GenerationConfig | None = None, *, seed: int = 0,
        banner: str = "", out: TextIO | None = None, cache: Any = None, adapt: Any = None) -> int:
    """Read prompts and commands until ``:quit`` or Ctrl-D; returns the exit status 0.

    ``cache`` and ``adapt`` are :class:`Session`'s (a continuous cache per text; ``:adapt``).
    """
    out = out or sys.stdout
    session = Session(model, tokenizer, config, seed=seed, cache=cache, adapt=adapt)
    readline = _setup_readline()
    # Ctrl-C must reach us as KeyboardInterrupt even when we were started with SIGINT
    # ignored (a background job of a script, some launchers): Python keeps an inherited
    # "ignore" and would then never stop a generation.
    previous_sigint = None
    if threading.current_thread() is threading.main_thread():
        previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    if banner:
        print(banner, file=out)
    print("Type a prompt; an empty line continues the text; :help for commands; Ctrl-C stops, Ctrl-D quits.",
          file=out)
    print(session.show(), file=out)
    try:
        while not session.quit:
            try:
                line = input(PROMPT)
            except EOFError:  # Ctrl-D
                print(file=out)
                break
            except KeyboardInterrupt:  # Ctrl-C while typing: drop the line
                print("^C", file=out)
                continue
            command = line.strip()
            if not command.startswith(":"):
                _generate(session, line, False, out)  # a new document (empty: continue)
            elif command[1:].split(" ", 1)[0].lower() in ("continue", "c"):
                _generate(session, command.partition(" ")[2], True, out)
            else:
                try:
                    print(session.handle(command), file=out)
                except LmgenError as exc:  # keep the session: say what is wrong, and what is right
                    print(f"error: {exc}\n{REPL_HELP}", file=out)
    finally:
        _save_history(readline)
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
    return 0


def _generate(session: Session, text: str, continue_text: bool, out: TextIO) -> None:
    try:
        for piece in session.generate(text or None, continue_text=continue_text):
            out.write(piece)
            out.flush()
        stop = session.context.stop if session.context else None
        note = {"end": "[END]", "length": f"[max {session.settings['max_new_tokens']} tokens]"}.get(stop or "", "")
        out.write(f"\n  {note}\n" if note else "\n")
    except KeyboardInterrupt:
        out.write("\n  [interrupted]\n")
    except LmgenError as exc:
        out.write(f"\nerror: {exc}\n")
    out.flush()
    if getattr(session, "unknown", None):
        print(f"note: the vocabulary lacks {', '.join(map(repr, session.unknown))}; they became <unk>", file=out)
