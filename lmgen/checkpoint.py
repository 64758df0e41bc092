"""Self-describing, safe checkpoints.

A checkpoint is a folder::

    config.json         format version, lmgen version, model / tokenizer / training config,
                        corpus name + fingerprint, metrics at save time
    tokenizer.json      the vocabulary (+ tokenizer.model for SentencePiece)
    model.safetensors   the weights: plain tensors, no pickled code (with --average or
                        NT-ASGD the averaged weights, which inference uses)
    train_state.pt      optimiser, schedule, RNG states, data position, carried hidden
                        state, when averaging the raw weights; read with
                        ``torch.load(weights_only=True)``

It is written into a temporary sibling folder, fsynced, then renamed into place, so a
crash mid-save leaves the previous checkpoint intact. A run folder (``--out``) holds
``last/``, ``best/`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, from_dict
from .errors import CheckpointError, ConfigError, LmgenError
from .files import check_archive, open_regular, physical_memory, read_json
from .model import RNNLM, build_model
from .tokenizer import SPM_MODEL_FILE, TOKENIZER_FILE, Tokenizer, tokenizer_from_state
from .version import __version__

FORMAT = "lmgen-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"

# Size caps on what a checkpoint folder may hand us (lmgen's own files are far smaller:
# a config is ~3 KB, a 267k-word vocabulary ~4 MB, a weights header ~100 bytes a tensor).
CONFIG_CAP = 1 << 20
TOKENIZER_CAP = 64 << 20
HEADER_CAP = 1 << 20
# train_state.pt holds the optimiser's moments (AdamW: 2 per weight), with --average or NT-ASGD
# the raw weights and their average (2 more), the carried state and small plain data: never
# more than this multiple of the weights, plus a margin.
STATE_FACTOR, STATE_MARGIN = 5, 256 << 20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


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
    """config.json of a checkpoint folder: capped, regular, shallow JSON of the known format."""
    path = folder / CONFIG_FILE
    config = read_json(path, CONFIG_CAP, "config")
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
    if model_config.vocab_size < 1:  # 0 means "not set yet" while training builds a model, never in a checkpoint
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad model config (vocab_size {model_config.vocab_size})")
    header = read_weights_header(folder / WEIGHTS_FILE)
    check_weights_fit(model_config, header, folder / WEIGHTS_FILE)  # before anything is allocated
    tokenizer = _load_tokenizer(folder)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model was built for "
            f"{model_config.vocab_size}; tokenizer and weights come from different runs"
        )
    model = build_model(model_config)
    weights = folder / WEIGHTS_FILE
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
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path} is missing: this checkpoint cannot resume training")
    weights = Path(folder) / WEIGHTS_FILE
    weights_bytes = weights.stat().st_size if weights.is_file() else 0
    check_archive(path, STATE_FACTOR * weights_bytes + STATE_MARGIN, "training state")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors and plain data, "
            f"which could run code ({(str(exc).splitlines() or ['no detail'])[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupted ({exc})") from None


def _load_tokenizer(folder: Path) -> Tokenizer:
    # Each tokenizer file is checked (regular, inside the folder, capped, shallow JSON) first.
    # The checked parse is the one used: tokenizer.json (up to 64 MB) is read once.
    state = read_json(folder / TOKENIZER_FILE, TOKENIZER_CAP, "tokenizer")
    if (folder / SPM_MODEL_FILE).exists() or (folder / SPM_MODEL_FILE).is_symlink():
        os.close(open_regular(folder / SPM_MODEL_FILE, TOKENIZER_CAP, "SentencePiece model"))
    try:
        return tokenizer_from_state(state, folder / TOKENIZER_FILE)
    except LmgenError as exc:
        raise CheckpointError(f"{folder}: cannot load the tokenizer: {exc}") from None


def read_weights_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, checked against the file's own size.

    Layout: 8 bytes (little-endian header length N), N bytes of JSON ``{name: {dtype,
    shape, data_offsets}}``, then the data. Every tensor must lie inside the data and
    its byte count must equal its shape times its dtype's size.
    """
    fd = open_regular(path, 1 << 62, "weights file")
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(HEADER_CAP, size - 8):
            raise CheckpointError(f"{path} is truncated or not a safetensors file (header length {n})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a damaged header; the checkpoint is corrupted")
    data = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
            numel = math.prod(shape)
            ok = min(shape, default=0) >= 0 and 0 <= lo <= hi <= data and hi - lo == numel * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path} is truncated or corrupted: tensor {name!r} does not fit the file")
    return header


def check_weights_fit(cfg: ModelConfig, header: dict[str, Any], path: Path) -> None:
    """Refuse a config whose model differs from the weights file, before building it.

    The layer count is compared first (a crafted ``layers: 10000000`` must not reach even
    a meta-device build); then every tensor's name and shape, on a meta-device model.
    """
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    nbytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors.values())
    have = physical_memory()
    if have is not None and nbytes > have:
        raise CheckpointError(f"{path} holds {nbytes / 2**30:,.1f} GiB of weights; this machine has "
                              f"{have / 2**30:,.1f} GiB of memory")
    if cfg.cell != "window":
        layers = sum(1 for k in tensors if k.startswith("rnn.weight_hh_l"))
        if layers != cfg.layers:
            raise CheckpointError(f"{path} holds {layers} recurrent layers but config.json says {cfg.layers}; "
                                  "the config and the weights come from different runs")
    try:  # on the meta device nothing is allocated, but absurd sizes still overflow
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: config.json describes a model that cannot be built "
                              f"({str(exc)[:120]}); the config and the weights come from different runs") from None
    aliases = (header.get("__metadata__") or {}).keys() - {"format"}
    for name, shape in expected.items():
        found = tensors.get(name)
        if found is None and name in aliases:
            continue  # a tied weight, stored once under its twin's name
        if found is None or tuple(found["shape"]) != shape:
            got = "missing" if found is None else f"shape {tuple(found['shape'])}"
            raise CheckpointError(f"{path}: {name} is {got} where config.json needs {shape}; "
                                  "the config and the weights come from different runs")


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[RNNLM, Tokenizer]:
    """Load ``(model, tokenizer)`` from a checkpoint or run folder.

    >>> model, tokenizer = lmgen.load("checkpoints/shakespeare")  # doctest: +SKIP
    """
    ckpt = load_checkpoint(path, device)
    return ckpt.model, ckpt.tokenizer
