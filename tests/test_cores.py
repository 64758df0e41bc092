"""--threads: a number or OMP_NUM_THREADS wins; auto measures the other processes' load."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from lmgen import cores
from lmgen.errors import ConfigError


def test_a_number_and_omp_num_threads_override_auto(monkeypatch):
    assert cores.choose("3") == cores.Threads(3, False, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cores.choose("auto").threads == 1 and cores.choose("auto").reason == "OMP_NUM_THREADS"
    assert cores.parse("0") is None and cores.parse(" AUTO ") is None
    with pytest.raises(ConfigError, match="--threads must be auto or a whole number"):
        cores.parse("many")


@pytest.mark.skipif(cores.others_busy(0.05) is None, reason="no /proc/stat here")
def test_auto_sees_a_busy_neighbour():
    # A spinning process keeps about one core busy; this process sleeps meanwhile.
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert cores.others_busy(0.5) > 0.5
    finally:
        hog.kill()
        hog.wait()
