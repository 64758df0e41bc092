"""Self-describing, safe checkpoints.

A checkpoint is a folder::

    config.json         format version, lmgen version, model / tokenizer / training config,
                        corpus name + fingerprint, metrics at save time
    tokenizer.json      the vocabulary (+ tokenizer.model for SentencePiece)
    model.safetensors   the weights: plain tensors, no pickled code
    train_state.pt      optimiser, schedule, RNG states, data position, carried hidden
                        state; read with ``torch.load(weights_only=True)``

It is written into a temporary sibling folder, fsynced, then renamed into place, so a
crash mid-save leaves the previous checkpoint intact. A run folder (``--out``) holds
``last/``, ``best/`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .version import __version__
from .config import ModelConfig, from_dict
from .errors import CheckpointError, ConfigError, LmgenError
from .model import RNNLM, build_model
from .tokenizer import Tokenizer, load_tokenizer

FORMAT = "lmgen-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    folder: Path
    model: RNNLM
    tokenizer: Tokenizer
    config: dict[str, Any]  # the whole config.json


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    folder: str | os.PathLike,
    model: RNNLM,
    tokenizer: Tokenizer,
    *,
    train_config: dict | None = None,
    corpus: dict | None = None,
    metrics: dict | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically; the previous one survives any crash mid-save."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        config = {
            "format": FORMAT,
            "lmgen_version": __version__,
            "model": asdict(model.config),
            "tokenizer": tokenizer.to_dict(),
            "train": train_config,
            "corpus": corpus,
            "metrics": metrics or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save(tmp)
        # save_model de-duplicates tied weights (save_file would refuse shared tensors).
        save_model(_unwrap(model), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        if train_state is not None:
            torch.save(train_state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        _swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _old(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.old"


def _swap_into_place(tmp: Path, folder: Path) -> None:
    # POSIX cannot rename a folder over a non-empty one, so: folder -> .old, tmp -> folder,
    # drop .old. A crash between the two renames leaves .old, which resolve() falls back to.
    old = _old(folder)
    if old.exists():
        if folder.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, folder)  # a previous crash left only .old: restore it first
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _unwrap(model: torch.nn.Module) -> RNNLM:
    """The plain RNNLM under torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model  # type: ignore[return-value]


def resolve(path: str | os.PathLike) -> Path:
    """The checkpoint folder that ``path`` names: itself, or ``best/`` then ``last/`` of a run folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `lmgen train --out {path}`")
    if (path / CONFIG_FILE).exists():
        return path
    for name in ("best", "last"):
        for candidate in (path / name, _old(path / name)):
            if (candidate / CONFIG_FILE).exists():
                return candidate
    raise CheckpointError(
        f"{path} is not an lmgen checkpoint: it has no {CONFIG_FILE} (nor best/ or last/ with one)"
    )


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable or not JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(config, dict) or "format" not in config:
        raise CheckpointError(f"{path} is not an lmgen checkpoint config (no 'format' field)")
    if config["format"] != FORMAT:
        raise CheckpointError(
            f"{path} has format {config['format']!r}, but this lmgen ({__version__}) reads {FORMAT!r}; "
            "use the lmgen version that wrote it"
        )
    return config


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load model and tokenizer from a checkpoint or run folder, never unpickling code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    folder = resolve(path)
    config = read_config(folder)
    try:
        model_config = from_dict(ModelConfig, config["model"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad model config ({exc})") from None
    try:
        tokenizer = load_tokenizer(folder)
    except LmgenError as exc:
        raise CheckpointError(f"{folder}: cannot load the tokenizer: {exc}") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model was built for "
            f"{model_config.vocab_size}; tokenizer and weights come from different runs"
        )
    model = build_model(model_config)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing; the checkpoint is incomplete")
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is truncated, corrupted or does not fit the config ({exc})") from None
    model.to(device)
    model.eval()
    return Checkpoint(folder, model, tokenizer, config)


def load_train_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True`` (no code runs)."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing: this checkpoint cannot resume training")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors and plain data, "
            f"which could run code ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupted ({exc})") from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[RNNLM, Tokenizer]:
    """Load ``(model, tokenizer)`` from a checkpoint or run folder.

    >>> model, tokenizer = lmgen.load("checkpoints/shakespeare")  # doctest: +SKIP
    """
    ckpt = load_checkpoint(path, device)
    return ckpt.model, ckpt.tokenizer
