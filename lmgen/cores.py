"""How many CPU threads torch uses: by default (``--threads auto``) the cores that are really free.

Torch's default takes every core with OpenMP threads that spin while they wait. Next to
another busy process that is the worst choice: the spinning threads fight it for the
cores, and on a 2-core machine the default recipe trained 4x slower (8.0 s quiet, 32.6 s
beside ``python -c "while True: pass"``; with OMP_WAIT_POLICY=PASSIVE 14.6 s, with one
thread 14.3 s). So ``auto``:

* measures, over 0.2 s before torch starts, how many cores other processes keep busy
  (one read of ``/proc/stat`` before and after; this process is idle meanwhile);
* quiet machine: every usable core, with torch's default waiting (fastest when alone);
* busy machine: only the free cores (at least one), and ``OMP_WAIT_POLICY=PASSIVE`` so
  idle threads sleep instead of spinning against the other process. The policy is read
  once, when torch loads, so it is set in the environment before torch is imported;
* while training, :class:`ThreadGovernor` measures again every ~10 s (the machine's busy
  time minus this process's own CPU time) and changes ``torch.set_num_threads`` when the
  free cores change.

A number (``--threads 2``) or ``OMP_NUM_THREADS`` in the environment overrides all of
this; so does an ``OMP_WAIT_POLICY`` the user set. Where ``/proc/stat`` is missing
(macOS, Windows) ``auto`` keeps torch's default.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from .errors import ConfigError

SAMPLE_SECONDS = 0.2
RECHECK_SECONDS = 10.0


@dataclass
class Threads:
    """The choice: ``threads`` (None: torch's default), whether waiting threads sleep, and why."""

    threads: int | None
    passive: bool
    reason: str

    def describe(self) -> str:
        return f"{self.threads or 'default'} thread(s) ({self.reason})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _machine_busy_seconds() -> float | None:
    """Seconds of CPU time all processes have used since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _mark() -> tuple[float, float | None, float]:
    """(now, the machine's busy CPU seconds, this process's): a point to measure from."""
    return time.monotonic(), _machine_busy_seconds(), _own_seconds()


def _others_since(mark: tuple[float, float | None, float]) -> float | None:
    """Cores other processes kept busy, on average, since ``mark`` (None where the OS does not say)."""
    t0, busy0, own0 = mark
    busy = _machine_busy_seconds()
    if busy is None or busy0 is None:
        return None
    return max(0.0, (busy - busy0) - (_own_seconds() - own0)) / max(time.monotonic() - t0, 1e-9)


def others_busy(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many cores other processes kept busy over the next ``seconds`` (this one sleeps)."""
    mark = _mark()
    time.sleep(seconds)
    return _others_since(mark)


def parse(spec: str | int) -> int | None:
    """``"auto"`` -> None; ``"4"`` or 4 -> 4 (``"0"``: auto, as older runs wrote it)."""
    text = str(spec).strip().lower()
    if text == "auto":
        return None
    if not text.isdigit():
        raise ConfigError(f"--threads must be auto or a whole number of threads, got {spec!r}")
    return int(text) or None


_recent: dict[str, tuple[float, Threads]] = {}  # spec -> (when, choice): the CLI and train() agree


def choose(spec: str | int = "auto") -> Threads:
    """Decide the thread count and wait policy (see the module docstring).

    A choice made in the last minute for the same spec is reused, so the CLI (which must
    decide before torch loads) and :func:`lmgen.train.train` measure the machine once.
    """
    key = str(spec)
    when, choice = _recent.get(key, (-math.inf, None))
    if choice is None or time.monotonic() - when > 60:
        choice = _choose(spec)
        _recent[key] = (time.monotonic(), choice)
    return choice


def _choose(spec: str | int) -> Threads:
    wanted = parse(spec)
    if wanted is not None:
        return Threads(wanted, False, "--threads")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return Threads(int(os.environ["OMP_NUM_THREADS"]), False, "OMP_NUM_THREADS")
    cores = usable_cores()
    busy = others_busy()
    if busy is None:
        return Threads(None, False, "auto: load unknown here")
    free = cores - busy
    if free > cores - 0.5:
        return Threads(cores, False, "auto: machine quiet")
    threads = max(1, int(free + 0.5))
    return Threads(threads, True, f"auto: other processes keep {busy:.1f} of {cores} cores busy")


def prepare(spec: str | int = "auto") -> Threads:
    """:func:`choose`, and set the wait policy in the environment; call before torch is imported."""
    choice = choose(spec)
    if choice.passive and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return choice


def apply(choice: Threads) -> None:
    """Give torch the chosen thread count (no-op for torch's default)."""
    if choice.threads:
        import torch

        torch.set_num_threads(choice.threads)


class ThreadGovernor:
    """Re-measures the free cores every ``every`` seconds while training and follows them.

    Cheap: :meth:`tick` reads the clock each step and, once per period, ``/proc/stat``
    and ``os.times``. Only an ``auto`` choice is governed; a number stays as given.
    """

    def __init__(self, choice: Threads, every: float = RECHECK_SECONDS):
        self.auto = choice.reason.startswith("auto") and _machine_busy_seconds() is not None
        self.every = every
        self.cores = usable_cores()
        self.mark = _mark()

    def tick(self) -> str | None:
        """Call once a step; returns a message when the thread count changed."""
        if not self.auto or time.monotonic() - self.mark[0] < self.every:
            return None
        others, self.mark = _others_since(self.mark), _mark()
        if others is None:
            return None
        import torch

        threads = self.cores if others < 0.5 else max(1, int(self.cores - others + 0.5))
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return f"other processes keep {others:.1f} of {self.cores} cores busy: now {threads} thread(s)"
