"""Run the real CLI and check that it refused cleanly: the shared helper of the hardening tests.

A clean refusal is a non-zero exit, no traceback, a last line ``lmgen: error: ...`` (or
argparse's ``lmgen CMD: error: ...``), within a time limit and a peak RSS under 500 MB,
read from the kernel's rusage of that process alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

# Runs the CLI as its only child, then reports that child's peak RSS (KiB on Linux).
_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run([sys.executable, '-m', 'lmgen', *sys.argv[1:]], stdin=subprocess.DEVNULL).returncode\n"
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)
_ERROR_LINE = re.compile(r"^lmgen( \w+)?: error: ")


def measured(*args: object, env: dict | None = None, cwd: object = None) -> tuple[int, list[str], float, float, str]:
    """Run ``lmgen ARGS``: (exit code, non-empty stderr lines, seconds, peak RSS in MB, stdout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cwd)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    rss_mb = int(lines.pop().split()[1]) / 1024
    return done.returncode, lines, seconds, rss_mb, done.stdout


def refused(*args: object, timeout: float = 10.0, env: dict | None = None, cwd: object = None) -> str:
    """Run ``lmgen ARGS``; assert a clean, fast, small refusal; return its error line."""
    code, lines, seconds, rss_mb, _ = measured(*args, env=env, cwd=cwd)
    stderr = "\n".join(lines)
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    assert lines and _ERROR_LINE.match(lines[-1]), stderr
    assert seconds < timeout, f"{seconds:.1f} s: {lines[-1]}"
    assert rss_mb < 500, f"peak RSS {rss_mb:.0f} MB: {lines[-1]}"
    return lines[-1]
