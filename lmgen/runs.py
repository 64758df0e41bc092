"""The run folder (``--out``): what a training run writes, and the guards around it.

A run folder holds::

    last/           the newest checkpoint, with train_state.pt: what --resume continues
    best/           the checkpoint of the best validation loss so far
    metrics.jsonl   one JSON row per log line ("train") and per evaluation ("eval")
    .lock           the pid of the `lmgen train` writing into it (a lock held while it runs)

Under ``torchrun`` only rank 0 writes: a :class:`RunFolder` made with ``writes=False``
checks what rank 0 checks but leaves the folder alone, so the training loop calls it
the same way on every rank.

>>> folder = RunFolder(Path("checkpoints/run"), writes=False)
>>> folder.log_metrics({"kind": "train", "step": 1})  # another rank's row: not written
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Any

import torch

from .checkpoint import read_config, resolve, save_checkpoint
from .config import ModelConfig, TrainConfig, flag, from_dict
from .errors import ConfigError, LmgenError
from .tokenizer import Tokenizer

METRICS_FILE = "metrics.jsonl"


class RunFolder:
    """The run folder ``out`` as one process sees it; ``writes=False`` (ranks other than 0) only reads."""

    def __init__(self, out: Path, writes: bool = True):
        self.out = Path(out)
        self.writes = writes
        self.parent: dict[str, Any] | None = None  # --init-from: config.json's train.parent (lmgen.finetune)

    def check(self, resume: bool, overwrite: bool, touch: bool = True) -> None:
        """Fail before any work when the folder is unusable or would be clobbered.

        With ``touch`` (and ``writes``) also create the folder, prove it writable, and clear
        the old run that ``overwrite`` replaces; without, only look.
        """
        out = self.out
        has_run = (out / "last").exists() or (out / ".last.old").exists() or (out / "best").exists()
        if resume and not has_run:
            raise ConfigError(f"--resume: {out} holds no run to continue (no {out / 'last'}); "
                              "drop --resume to start one")
        if has_run and not resume and not overwrite:
            raise ConfigError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        if not (touch and self.writes):
            return
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write to the run folder {out}: {exc.strerror or exc}") from None
        if has_run and overwrite and not resume:
            for name in ("last", "best", ".last.old", ".best.old", METRICS_FILE):
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

    def lock(self) -> IO[str] | None:
        """Hold an exclusive lock on the folder while this process trains into it; close the handle to free it.

        Two runs writing one folder would interleave metrics and overwrite each other's
        checkpoints. The lock (``flock`` on ``out/.lock``) dies with the process, so a crashed
        or killed run never leaves the folder locked. None where ``fcntl`` is missing (Windows)
        or this process does not write.
        """
        try:
            import fcntl
        except ImportError:
            return None
        if not self.writes:
            return None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            handle = open(self.out / ".lock", "a+", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write to the run folder {self.out}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise ConfigError(f"{self.out} is in use by another `lmgen train` (pid {holder}); wait for it to finish, "
                              "stop it, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def check_disk(self, num_parameters: int) -> None:
        """Fail now, not at the first save, when the disk cannot hold the checkpoints."""
        if not self.writes:
            return
        # last/ holds the weights, the optimiser's moments and, when averaging, the raw weights
        # and their average (up to 5x the weights); best/ the weights; plus a swap copy of last/.
        need = num_parameters * 4 * (5 + 1 + 5)
        free = shutil.disk_usage(self.out).free
        if free < need:
            raise LmgenError(f"only {free / 1e6:.0f} MB free under {self.out}, "
                             f"checkpoints need about {need / 1e6:.0f} MB")

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl."""
        if self.writes:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def forget_metrics_after(self, step: int) -> None:
        """On resume, forget rows the interrupted run logged after its last checkpoint."""
        path = self.out / METRICS_FILE
        if not self.writes or not path.exists():
            return
        keep, torn = [], 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:  # a line cut off by a kill mid-write
                row, torn = None, torn + 1
            if isinstance(row, dict) and row.get("step", 0) <= step:
                keep.append(line)
        if torn:
            print(f"lmgen: warning: dropped {torn} unreadable line(s) of {path} (cut off by a crash)",
                  file=sys.stderr)
        path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def save(self, model: torch.nn.Module, tokenizer: Tokenizer, train_state: dict[str, Any], best: bool,
             **about: Any) -> None:
        """Write ``last/`` (with the state to resume from) and, when ``best``, ``best/`` (weights only).

        ``about``: the ``train_config``, ``metrics`` and ``corpus`` entries of config.json.
        """
        if not self.writes:
            return
        if self.parent is not None:
            about["train_config"] = {**(about.get("train_config") or {}), "parent": self.parent}
        save_checkpoint(self.out / "last", model, tokenizer, train_state=train_state, **about)
        if best:
            save_checkpoint(self.out / "best", model, tokenizer, **about)


def last_checkpoint_folder(out: str | os.PathLike) -> Path:
    """``OUT/last``, or the copy a crash mid-save left as ``OUT/.last.old``."""
    folder = Path(out) / "last"
    if not folder.exists() and (Path(out) / ".last.old").exists():
        folder = Path(out) / ".last.old"
    return resolve(folder)


def saved_config(out: str | os.PathLike) -> dict[str, Any]:
    """config.json of a run's last checkpoint (for ``--resume``: the settings to continue with)."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"--resume: {out} does not exist; drop --resume to start a run there")
    if not any((out / name).exists() for name in ("last", ".last.old")):
        raise ConfigError(f"--resume: {out} has no checkpoint yet (the run stopped before its first save, which "
                          f"comes every --eval-every steps); start it again without --resume, with --overwrite")
    return read_config(last_checkpoint_folder(out))


# What ``--resume`` may change. The rest fixes what the saved state means: the tokens
# (corpus decoding, tokenizer), the data position and carried state (batch, bptt, jitter),
# and the optimiser's and averager's state (optimizer, average, nonmono). The corpus may be
# named anew (a path instead of a name): train() refuses different content. The seed may
# change but changes nothing: the saved generators replace it. init_from and extend_vocab
# record how the run began (never given with --resume); --finetune is a pass of its own.
RESUME_MAY_CHANGE = frozenset({
    "corpus", "steps", "epochs", "time", "lr", "weight_decay", "momentum", "clip", "schedule", "warmup", "min_lr",
    "decay_after", "decay_factor", "plateau_factor", "plateau_patience", "patience", "ar", "tar", "eval_every",
    "eval_tokens", "log_every", "device", "amp", "compile", "threads", "max_nonfinite", "out", "resume", "progress",
    "seed", "freeze_embeddings", "finetune",
})
RESUME_FIXED = frozenset({
    "tokenizer", "spm_vocab", "spm_type", "max_vocab", "min_count", "encoding_errors", "batch", "bptt",
    "bptt_jitter", "optimizer", "average", "nonmono", "init_from", "extend_vocab",
    "separator", "valid_fraction", "test_fraction", "split_seed",  # which text is train/valid: the token caches
})


def resume_settings(out: str | os.PathLike, model_given: dict[str, Any],
                    train_given: dict[str, Any]) -> tuple[TrainConfig, ModelConfig]:
    """The settings ``--resume`` continues with: the run's own, with the changes it allows.

    Every model setting and every :data:`RESUME_FIXED` one given with a value other than
    the run's is refused, in one line naming the flag.
    """
    from .finetune import PASS_CHANGES, pass_settings

    saved = saved_config(out)
    saved_model, saved_train = saved.get("model") or {}, saved.get("train") or {}
    for name in ("init_from", "extend_vocab"):  # the same recipe may name the run's own parent again
        if name in train_given and train_given[name] != saved_train.get(name, getattr(TrainConfig, name)):
            raise ConfigError(f"{flag(name)} starts a new run from a checkpoint; --resume continues the run in --out: "
                              "use one or the other")
    finetuning = bool(train_given.get("finetune"))
    if finetuning:  # the fine-tune pass's own settings (averaged SGD), checked against what was given
        train_given = {**train_given, **pass_settings(saved_train, train_given)}
    for name, value in model_given.items():
        if saved_model.get(name, getattr(ModelConfig, name, None)) != value:
            raise ConfigError(f"{flag(name)} cannot change when resuming "
                              f"(the run has {saved_model.get(name)!r})")
    for name, value in train_given.items():
        old = saved_train.get(name, getattr(TrainConfig, name))  # a run from before the field existed
        if name in RESUME_FIXED and old != value and not (finetuning and name in PASS_CHANGES):
            raise ConfigError(f"{flag(name)} cannot change when resuming (the run has {old!r}, not {value!r}): "
                              "the saved state depends on it; start a new run to change it")
    base = {k: v for k, v in saved_train.items() if k in RESUME_MAY_CHANGE | RESUME_FIXED}
    base.pop("finetune", None)  # a fine-tune pass runs when asked for, not again at every later --resume
    base.update(train_given)
    return from_dict(TrainConfig, base), from_dict(ModelConfig, saved_model)
