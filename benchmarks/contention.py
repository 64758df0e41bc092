"""Training throughput on a busy machine: ``--threads auto`` against a fixed thread count.

Trains the default recipe (``lmgen train``, tiny corpus of the standard library, STEPS
steps) as a subprocess in four settings, interleaved over ROUNDS rounds:

* quiet, ``--threads auto``            (lmgen's default)
* quiet, ``--threads N``               (N = every core, torch's own default before auto)
* next to one busy process, auto
* next to one busy process, N threads
* quiet, ``--threads 1``               (what one free core can give: the ceiling of the busy runs)

The busy process is ``python -c "while True: pass"`` (one core). Each figure is the
tokens/s of the run's own last metrics rows (training time only), best of the rounds.
Issue 16's aim: busy + auto >= 60 % of quiet + auto, and quiet + auto no slower than
quiet + N.

    python benchmarks/contention.py [--steps 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(threads: str, steps: int, busy: bool) -> float:
    """Tokens/s of one training run (from its metrics.jsonl), next to a busy process or not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}  # let lmgen decide
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, "-m", "lmgen", "train", "--steps", str(steps), "--eval-every",
                            str(steps), "--eval-tokens", "2000", "--threads", threads, "--out", out,
                            "--no-progress", "--log-every", "10"], env=env, check=True, capture_output=True)
            rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    train = [r for r in rows if r.get("kind") == "train"]
    first, last = train[len(train) // 5], train[-1]  # skip the warm-up steps
    return (last["tokens"] - first["tokens"]) / (last["train_seconds"] - first["train_seconds"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    cores = str(os.cpu_count() or 1)
    settings = [("quiet", "auto", False), ("quiet", cores, False), ("busy", "auto", True), ("busy", cores, True),
                ("quiet", "1", False)]
    best = {s: 0.0 for s in settings}
    for _ in range(args.rounds):
        for s in settings:
            best[s] = max(best[s], run_once(s[1], args.steps, s[2]))
    for (where, threads, _), tok_s in best.items():
        print(f"{where:5s} --threads {threads:4s}: {tok_s:9,.0f} tok/s", flush=True)
    quiet_auto, quiet_fixed = best[settings[0]], best[settings[1]]
    busy_auto, busy_fixed = best[settings[2]], best[settings[3]]
    one_core = best[settings[4]]
    print(f"busy/quiet with auto: {busy_auto / quiet_auto:.0%} (aim >= 60%); with {cores} threads: "
          f"{busy_fixed / quiet_fixed:.0%}; quiet auto / quiet {cores} threads: {quiet_auto / quiet_fixed:.2f}; "
          f"one free core gives {one_core / quiet_auto:.0%} of quiet, busy auto reaches "
          f"{busy_auto / one_core:.0%} of that")
    return 0


if __name__ == "__main__":
    sys.exit(main())
