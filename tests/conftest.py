"""Shared test setup: the corpora mirror and a throw-away cache folder.

The mirror is $LMGEN_CORPORA, else ``<repo>/../shared/corpora``; tests that need it take
the ``mirror`` fixture, which skips (saying how to fix it) when there is none.
LMGEN_CACHE always points at a session temp folder, so tests never write to ~/.cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# pytest -n 2 runs two torch processes on two cores: one thread each, and idle OpenMP
# threads that sleep rather than spin (two spinning pools slow small ops 10-200x).
# Set before anything imports torch; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _find_mirror() -> Path | None:
    value = os.environ.get("LMGEN_CORPORA")
    candidate = Path(value).expanduser() if value else REPO.parent / "shared" / "corpora"
    return candidate if candidate.is_dir() else None


def pytest_configure(config: pytest.Config) -> None:
    # Set at configure time so subprocesses (CLI smoke tests) inherit it too.
    found = _find_mirror()
    if found is not None and not os.environ.get("LMGEN_CORPORA"):
        os.environ["LMGEN_CORPORA"] = str(found)


NO_CUDA = "no CUDA"  # the skip reason of every `gpu` test on a machine without a GPU


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests skip without CUDA; the summary below counts them."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    # Counted from the reports, so it also works under pytest-xdist (workers collect, the
    # controller summarises): an untested CUDA path must be visible in every CI log.
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if isinstance(r.longrepr, tuple) and r.longrepr[2].endswith(NO_CUDA))
    if n:
        terminalreporter.write_line(f"{n} GPU tests not run: no CUDA", yellow=True, bold=True)


@pytest.fixture(scope="session", autouse=True)
def _lmgen_cache(tmp_path_factory: pytest.TempPathFactory):
    old = os.environ.get("LMGEN_CACHE")
    os.environ["LMGEN_CACHE"] = str(tmp_path_factory.mktemp("lmgen-cache"))
    yield Path(os.environ["LMGEN_CACHE"])
    if old is None:
        os.environ.pop("LMGEN_CACHE", None)
    else:
        os.environ["LMGEN_CACHE"] = old


@pytest.fixture
def mirror() -> Path:
    """The shared corpora mirror folder, or skip the test."""
    found = _find_mirror()
    if found is None:
        pytest.skip("shared corpora mirror not found: set LMGEN_CORPORA=/path/to/shared/corpora")
    return found


# A small real text with several documents, quotes, a URL and indentation, for tiny
# end-to-end runs that must not depend on the mirror.
TINY_TEXT = (
    'He said "hello there" and left.\n'
    "See https://example.org/page?id=3 for more.\n"
    "def f(x):\n    return x + 1\n"
    "The cat sat on the mat. The dog sat on the log.\n"
) * 40


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text file of ~8 kB (split 90/5/5 by lmgen like any user file)."""
    path = tmp_path_factory.mktemp("tiny-corpus") / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """A run folder (best/, last/, metrics.jsonl) of a tiny char-LSTM trained for 80 steps."""
    from lmgen.config import ModelConfig, TrainConfig
    from lmgen.train import train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    cfg = TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=32, steps=80, eval_every=40, log_every=5,
                      lr=2e-2, warmup=0, progress=False, out=str(out), seed=0)
    train(cfg, ModelConfig(embed=16, hidden=32, layers=1), log=lambda msg: None)
    return out
