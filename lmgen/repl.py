"""``lmgen repl``: the interactive loop. I/O only; the logic is :class:`lmgen.sampling.session.Session`.

Line editing and history come from ``readline`` (history in ``$LMGEN_CACHE/repl_history``
when that is set, else ``~/.lmgen_history``). Ctrl-C stops a generation (or clears the
line being typed) and returns to the prompt; Ctrl-D on an empty line quits. A prompt may
span lines: a line ending with a backslash goes on, and lines pasted at once (already
waiting when the first is read) join it. ``:probs on`` colours generated text with ANSI
colours on a terminal only, and never when ``NO_COLOR`` is set (https://no-color.org).

>>> run(model, tokenizer, GenerationConfig(), seed=0)                  # doctest: +SKIP
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from .cache import CACHE_ENV, cache_folder
from .errors import LmgenError
from .generation import GenerationConfig
from .sampling.session import REPL_HELP, Session, probability_band

PROMPT = "lmgen> "
MORE_PROMPT = "...... "  # after a line that ended with a backslash
PICK_PROMPT = "pick> "
PASTE_WAIT_S = 0.03  # the next line of a paste arrives within this; no typist is that fast
_ANSI = {"green": "32", "yellow": "33", "magenta": "35", "red": "31"}


def colours_on(out: TextIO) -> bool:
    """Whether ``out`` gets ANSI colours: a terminal, and NO_COLOR not set (no-color.org)."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        tty = False
    return tty and not os.environ.get("NO_COLOR")


def _waiting() -> bool:
    """Whether more typed input is already waiting: the rest of a paste. Only on a terminal:
    piped input is read ahead by Python's buffer, where select cannot see it."""
    try:
        return sys.stdin.isatty() and bool(select.select([sys.stdin], [], [], PASTE_WAIT_S)[0])
    except (OSError, ValueError):
        return False


def _read_entry() -> str:
    """One prompt or command: a line, continued after a trailing backslash, joined by the
    lines of a paste. A command (``:...``) is one line."""
    line = input(PROMPT)
    if line.strip().startswith(":"):
        return line
    lines = []
    while True:
        if line.endswith("\\"):
            lines.append(line[:-1])
            line = input(MORE_PROMPT)
            continue
        lines.append(line)
        if not _waiting():
            return "\n".join(lines)
        line = input("")


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
        banner: str = "", out: TextIO | None = None, cache: Any = None, adapt: Any = None,
        copy_guard: Any = None, interventions: Any = None) -> int:
    """Read prompts and commands until ``:quit`` or Ctrl-D; returns the exit status 0.

    ``cache``, ``adapt`` and ``interventions`` are :class:`Session`'s (a continuous cache per
    text; ``:adapt``; the units ``--clamp`` / ``--ablate`` set).
    """
    out = out or sys.stdout
    session = Session(model, tokenizer, config, seed=seed, cache=cache, adapt=adapt, copy_guard=copy_guard,
                      interventions=interventions)
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
                line = _read_entry()
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
                if session.probs and command.lower().startswith(":probs") and not colours_on(out):
                    print("note: the output is not a terminal (or NO_COLOR is set): the text stays plain", file=out)
                _pick(session, out)
    finally:
        _save_history(readline)
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
    return 0


def _pick(session: Session, out: TextIO) -> None:
    """``:pick``'s answers, until the session leaves the pick (an empty line, Ctrl-D, Ctrl-C)."""
    while session.picking is not None:
        try:
            answer = input(PICK_PROMPT)
        except (EOFError, KeyboardInterrupt):
            session.picking = None
            print(file=out)
            return
        try:
            print(session.answer_pick(answer), file=out)
        except LmgenError as exc:
            print(f"error: {exc}", file=out)


def _generate(session: Session, text: str, continue_text: bool, out: TextIO) -> None:
    paint = colours_on(out)
    try:
        for piece in session.generate(text or None, continue_text=continue_text):
            prob = getattr(piece, "prob", None)  # set on generated pieces while :probs is on
            out.write(f"\x1b[{_ANSI[probability_band(prob)]}m{piece}\x1b[0m" if paint and prob is not None
                      else piece)
            out.flush()
        stop = session.context.stop if session.context else None
        note = {"end": "[END]", "length": f"[max {session.settings['max_new_tokens']} tokens]"}.get(stop or "", "")
        if stop and stop.startswith("stop:"):
            note = f"[stopped at {stop[5:]!r}]"
        out.write(f"\n  {note}\n" if note else "\n")
    except KeyboardInterrupt:
        out.write("\n  [interrupted]\n")
    except LmgenError as exc:
        out.write(f"\nerror: {exc}\n")
    out.flush()
    if getattr(session, "unknown", None):
        print(f"note: the vocabulary lacks {', '.join(map(repr, session.unknown))}; they became <unk>", file=out)
