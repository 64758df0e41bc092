"""Data-parallel scaling: training tokens/s for 1 and 2 processes on the same global batch.

CPU (the default): ``lmgen train`` in one process, then under ``torchrun`` with 2 ranks
(gloo, one thread each: OMP_NUM_THREADS=1), the same global batch B and the same number
of steps; each rank carries B/2 streams. tokens/s counts every rank's target tokens and
is measured between the first and the last metrics row (the first steps, start-up and
the final evaluation are left out); wall time includes start-up. Printed side by side.

GPU (``--gpu``; UNTESTED here: no GPU was available when this was written): one GPU
with bf16 autocast on and off (``--amp`` / ``--no-amp``) on a larger model, and, when
the machine has several GPUs, all of them under torchrun (NCCL, one rank per GPU).

    python benchmarks/ddp_scaling.py                       # CPU, 1 vs 2 processes
    python benchmarks/ddp_scaling.py --steps 200 --hidden 512
    python benchmarks/ddp_scaling.py --gpu                 # on a CUDA machine

Run it on a quiet machine with at least 2 free cores: on a shared one, timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_corpus(folder: Path, size: int) -> Path:
    """~``size`` characters of the Python standard library's source: real, offline text."""
    import sysconfig

    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= size:
            break
    path = folder / "stdlib.txt"
    path.write_text("".join(parts)[:size], encoding="utf-8")
    return path


def run(nproc: int, flags: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    """One training run; tokens/s between its first and last metrics rows, and wall seconds."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmgen", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "lmgen", "train"]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *flags, "--out", str(out), "--overwrite"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    first, last = rows[0], rows[-1]
    tok_s = (last["tokens"] - first["tokens"]) / max(last["train_seconds"] - first["train_seconds"], 1e-9)
    return {"tok_s": tok_s, "wall": wall, "loss": last["train_loss"]}


def table(title: str, results: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'setting':<40} {'tokens/s':>10} {'speed-up':>9} {'wall s':>8} {'last train loss':>16}")
    base = results[0][1]["tok_s"]
    for name, r in results:
        print(f"{name:<40} {r['tok_s']:>10,.0f} {r['tok_s'] / base:>8.2f}x {r['wall']:>8.1f} {r['loss']:>16.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per run")
    parser.add_argument("--batch", type=int, default=32, help="global batch B (streams), shared by the ranks")
    parser.add_argument("--bptt", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--procs", default="1,2", help="CPU: numbers of processes to compare")
    parser.add_argument("--gpu", action="store_true", help="UNTESTED: single-GPU bf16 on/off, then all GPUs")
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores"
          + (f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", LMGEN_CACHE=str(root / "cache"))
        corpus = make_corpus(root, 2_000_000)
        # Evaluation only once, at the end (outside the timed rows), on a short prefix.
        common = ["--corpus", str(corpus), "--steps", str(args.steps), "--log-every", "10",
                  "--eval-every", str(10 * args.steps), "--eval-tokens", "2000", "--no-progress", "--seed", "0"]
        if not args.gpu:
            flags = [*common, "--device", "cpu", "--batch", str(args.batch), "--bptt", str(args.bptt),
                     "--hidden", str(args.hidden), "--layers", str(args.layers)]
            results = []
            for n in (int(p) for p in args.procs.split(",")):
                results.append((f"CPU gloo, {n} proc x 1 thread, B={args.batch // n}/rank",
                                run(n, flags, root / f"cpu-{n}", env)))
            table(f"CPU data-parallel scaling: LSTM 1x{args.hidden}" if args.layers == 1 else
                  f"CPU data-parallel scaling: LSTM {args.layers}x{args.hidden}", results)
            return

        # ---- GPU: UNTESTED (written without access to a GPU) --------------------------------
        if not torch.cuda.is_available():
            sys.exit("--gpu: PyTorch sees no CUDA GPU")
        gpu_batch, gpu_hidden, gpu_bptt = max(args.batch, 128), max(args.hidden, 1024), max(args.bptt, 128)
        flags = [*common, "--device", "cuda", "--batch", str(gpu_batch), "--bptt", str(gpu_bptt),
                 "--hidden", str(gpu_hidden), "--layers", "2"]
        results = [
            ("1 GPU, fp32 (--no-amp)", run(1, [*flags, "--no-amp"], root / "gpu-fp32", env)),
            ("1 GPU, bf16 autocast (--amp)", run(1, [*flags, "--amp"], root / "gpu-bf16", env)),
        ]
        n = torch.cuda.device_count()
        if n > 1 and gpu_batch % n == 0:
            results.append((f"{n} GPUs NCCL, bf16, B={gpu_batch // n}/rank",
                            run(n, [*flags, "--amp"], root / "gpu-ddp", env)))
        table(f"GPU (UNTESTED path): LSTM 2x{gpu_hidden}, B={gpu_batch}, T={gpu_bptt}", results)


if __name__ == "__main__":
    main()
