"""Training from an existing checkpoint: fine-tuning (``--init-from``) and AWD-LSTM's fine-tune
pass (``--resume --finetune``).

``lmgen train --init-from CKPT --corpus mine.txt`` starts a new run whose model holds the
parent checkpoint's weights and tokenizer, with a fresh optimiser and schedule
(:func:`finetune_settings`, :class:`Parent`):

- model flags left out take the parent's values; one that would change a weight's shape
  (``--hidden``, ``--cell``, ``--tie``, ...) is refused, naming the flag and both values;
- the parent's optimiser settings carry over, and ``--lr`` defaults to the parent's / 2;
- a char tokenizer lists the corpus's characters that the parent never saw. With
  ``--extend-vocab`` each gets new embedding and decoder rows (:func:`grow_rows`); without,
  they encode as ``<unk>`` (id 1, which samples as U+FFFD), as a char tokenizer always
  treats unseen characters. Word and SentencePiece tokenizers are kept as they are, and the
  corpus's ``<unk>`` rate is reported;
- config.json's ``train.parent`` records where the weights came from, with the sha256 of
  the parent's ``model.safetensors``.

``lmgen train --resume --finetune --out RUN`` is the fine-tune step of AWD-LSTM (Merity et
al. 2018; salesforce/awd-lstm-lm's finetune.py): the run restarts from its ``best/``
weights with SGD whose iterates are averaged from the first step, a fresh optimiser and a
constant rate, in the same run folder; steps, metrics.jsonl and ``best/`` continue
(:func:`pass_settings`, :func:`start_pass`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, Checkpoint, load_checkpoint, read_config, resolve
from .config import ModelConfig, TrainConfig, flag, from_dict
from .corpora import Corpus
from .data import encode_split
from .errors import CheckpointError, ConfigError
from .model import build_model
from .tokenizer import END, UNK, CharTokenizer, Tokenizer
from .train_state import TrainState

Log = Callable[[str], None]

# --init-from's default --lr: the parent's / 2. Measured (docs/benchmarks.md, 2-minute fine-tunes of a
# 10-minute char model): / 10 gained 0.03 nats/char over training from scratch, / 2 and / 1 gained 0.11.
LR_DIVISOR = 2
NOISE = 0.01  # new rows: the mean row plus noise of 1 % of each coordinate's spread
LISTED = 20  # unseen characters named in the log; the rest are counted
SGD_FAMILY = ("sgd", "ntasgd")
# Carried over from the parent when --optimizer is not given: its --lr only means something with them.
INHERITED = ("optimizer", "momentum", "weight_decay", "clip", "average", "nonmono")
TOKENIZER_FIELDS = ("tokenizer", "spm_vocab", "spm_type", "max_vocab", "min_count")
PASS_CHANGES = frozenset({"optimizer", "average"})  # set by --finetune although --resume fixes them


def weights_sha256(folder: Path) -> str:
    """sha256 of a checkpoint's model.safetensors: the parent's fingerprint in config.json."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_parent(init_from: str) -> tuple[Path, dict[str, Any], ModelConfig]:
    """The checkpoint folder ``init_from`` names (best/ then last/ of a run folder), its config.json
    and its model config, without loading weights."""
    folder = resolve(init_from)
    config = read_config(folder)
    try:
        return folder, config, from_dict(ModelConfig, config["model"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"--init-from {init_from}: bad model config in {folder / CONFIG_FILE} ({exc})") from None


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter (a tied matrix once), built on the meta device: nothing allocated."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def check_architecture(parent: ModelConfig, changes: dict[str, Any], source: str) -> ModelConfig:
    """The parent's model config with ``changes`` (model flags given), refusing any that changes a weight.

    A flag conflicts when it alone changes a parameter's name or shape (``--hidden``,
    ``--cell``, ``--tie``, ...); dropout and the other regularisers may change freely.

    >>> check_architecture(ModelConfig(vocab_size=5, hidden=32), {"hidden": 64}, "ckpt")  # doctest: +SKIP
    ConfigError: --hidden 64 conflicts with the parent ckpt, which has --hidden 32: ...
    """
    changes = {k: v for k, v in changes.items() if k != "vocab_size"}  # the tokenizer decides it
    reference = _shapes(parent)
    for name, value in changes.items():
        try:
            same = _shapes(dataclasses.replace(parent, **{name: value})) == reference
        except ConfigError:  # e.g. --tie with --embed != --hidden: not the parent's model either
            same = False
        if not same:
            raise ConfigError(f"{flag(name)} {_text(value)} conflicts with the parent {source}, which has "
                              f"{flag(name)} {_text(getattr(parent, name))}: a fine-tuned model keeps its parent's "
                              f"architecture; leave {flag(name)} out")
    child = dataclasses.replace(parent, **changes)
    if _shapes(child) != reference:
        raise ConfigError(f"the model flags {', '.join(map(flag, changes))} together change the architecture of "
                          f"the parent {source}; leave them out")
    return child


def finetune_settings(model_given: dict[str, Any], train_given: dict[str, Any]) -> tuple[TrainConfig, ModelConfig]:
    """The settings a ``--init-from`` run starts with, from the settings given (``train_given["init_from"]``).

    Model settings: the parent's, with the given ones that keep its architecture. Training
    settings: lmgen's defaults, the parent's tokenizer, and unless ``optimizer`` is given the
    parent's optimiser settings (:data:`INHERITED`); ``lr`` defaults to the parent's / 2.

    >>> cfg, model_cfg = finetune_settings({}, {"init_from": "checkpoints/run", "corpus": "mine.txt"})  # doctest: +SKIP
    >>> train(cfg, model_cfg)  # doctest: +SKIP
    """
    init_from = str(train_given["init_from"])
    _, config, parent_model = read_parent(init_from)
    model_cfg = check_architecture(parent_model, model_given, init_from)
    parent_train = config.get("train") or {}
    kind = (config.get("tokenizer") or {}).get("kind") or parent_train.get("tokenizer", TrainConfig.tokenizer)
    settings: dict[str, Any] = {name: parent_train[name] for name in TOKENIZER_FIELDS if name in parent_train}
    settings["tokenizer"] = kind
    for name in TOKENIZER_FIELDS:
        if name in train_given and name in settings and train_given[name] != settings[name]:
            raise ConfigError(f"{flag(name)} {train_given[name]} conflicts with the parent {init_from}, whose {kind} "
                              f"tokenizer a fine-tuned model keeps ({flag(name)} {settings[name]}); "
                              f"leave {flag(name)} out")
    if train_given.get("extend_vocab") and kind != "char":
        raise ConfigError(f"--extend-vocab is for char tokenizers; the parent's {kind} tokenizer is kept as it is "
                          "(lmgen reports the corpus's <unk> rate under it)")
    was = parent_train.get("optimizer", TrainConfig.optimizer)
    if "optimizer" not in train_given:
        settings.update({name: parent_train[name] for name in INHERITED if name in parent_train})
    elif "lr" not in train_given and (train_given["optimizer"] in SGD_FAMILY) != (was in SGD_FAMILY):
        raise ConfigError(f"--optimizer {train_given['optimizer']} differs from the parent's {was}, whose --lr does "
                          "not carry over: give --lr")
    if "lr" not in train_given:
        settings["lr"] = float(parent_train.get("lr", TrainConfig.lr)) / LR_DIVISOR
    settings.update(train_given)
    return from_dict(TrainConfig, settings), model_cfg


def model_config(cfg: TrainConfig, model_cfg: ModelConfig | None) -> ModelConfig:
    """The model settings :func:`lmgen.train.train` starts from: those given, else the parent's
    (``--init-from``), else the defaults."""
    if model_cfg is not None:
        return model_cfg
    return read_parent(cfg.init_from)[2] if cfg.init_from and not cfg.resume else ModelConfig()


def unseen_symbols(tokenizer: Tokenizer, texts: Iterable[str]) -> tuple[Counter[str], int]:
    """The characters of ``texts`` outside a char ``tokenizer``'s vocabulary, counted (in order of
    first appearance), and the number of characters read.

    >>> from lmgen.tokenizer import build_tokenizer
    >>> unseen_symbols(build_tokenizer("char", ["ab"]), ["abcc", "dc"])
    (Counter({'c': 3, 'd': 1}), 6)
    """
    counts: Counter[str] = Counter()
    total = 0
    for text in texts:
        total += len(text)
        for symbol in tokenizer.unknown_symbols(text, limit=len(text)):
            counts[symbol] += text.count(symbol)
    return counts, total


def describe_unseen(counts: Counter[str], total: int, limit: int = LISTED) -> str:
    """One bounded line: how many unseen characters, how often, and the ``limit`` most frequent.

    >>> describe_unseen(Counter({"é": 3, "ß": 1}), 100)
    "2 characters the parent never saw (4 occurrences, 4.00% of the training split): 'é' x3, 'ß' x1"
    """
    occurrences = sum(counts.values())
    shown = ", ".join(f"{symbol!r} x{n:,}" for symbol, n in counts.most_common(limit))
    more = f" and {len(counts) - limit:,} more" if len(counts) > limit else ""
    return (f"{len(counts):,} character{'s' if len(counts) != 1 else ''} the parent never saw ({occurrences:,} "
            f"occurrences, {occurrences / max(total, 1):.2%} of the training split): {shown}{more}")


@dataclass
class Parent:
    """The checkpoint a ``--init-from`` run starts from, the tokenizer the run uses, and what
    config.json records of it (``train.parent``)."""

    checkpoint: Checkpoint
    tokenizer: Tokenizer  # the parent's, or with --extend-vocab the parent's plus the unseen characters
    record: dict[str, Any]

    @classmethod
    def load(cls, cfg: TrainConfig, model_cfg: ModelConfig, corpus: Corpus, log: Log) -> "Parent":
        """Load ``cfg.init_from``, check ``model_cfg`` against it, and settle the vocabulary on ``corpus``."""
        ckpt = load_checkpoint(cfg.init_from, "cpu")
        parent_cfg = ckpt.model.config
        changes = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelConfig)
                   if f.name != "vocab_size" and getattr(model_cfg, f.name) != getattr(parent_cfg, f.name)}
        check_architecture(parent_cfg, changes, cfg.init_from)
        metrics, sha256 = ckpt.config.get("metrics") or {}, weights_sha256(ckpt.folder)
        log(f"fine-tuning from {ckpt.folder} (step {metrics.get('step')}, weights sha256 {sha256[:12]}...): "
            f"a fresh optimiser and schedule, --lr {cfg.lr:g}")
        tokenizer, about = _vocabulary(ckpt, corpus, cfg, log)
        record = {"init_from": cfg.init_from, "checkpoint": str(ckpt.folder.resolve()), "weights_sha256": sha256,
                  "corpus": ckpt.config.get("corpus"), "step": metrics.get("step"),
                  "val_loss": metrics.get("val_loss"), **about}
        return cls(ckpt, tokenizer, record)

    def child(self, model_cfg: ModelConfig, seed: int) -> nn.Module:
        """The model to train (``model_cfg``, its vocabulary the tokenizer's), holding the parent's weights."""
        model = build_model(model_cfg)
        parent = self.checkpoint.model
        if model_cfg.vocab_size == parent.config.vocab_size:
            model.load_state_dict(parent.state_dict())
        else:
            model.load_state_dict(grow_rows(parent, self.checkpoint.tokenizer, self.tokenizer, model, seed))
        return model


def _vocabulary(ckpt: Checkpoint, corpus: Corpus, cfg: TrainConfig, log: Log) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer the child uses on ``corpus``, and what config.json records about it."""
    tok = ckpt.tokenizer
    if tok.kind != "char":
        if cfg.extend_vocab:
            raise ConfigError(f"--extend-vocab is for char tokenizers; the parent's {tok.kind} tokenizer is kept")
        tokens = encode_split(corpus, tok, "train")
        rate = tokens.unknown / max(len(tokens), 1)
        log(f"{'warning: ' if rate >= 0.05 else ''}the parent's {tok.kind} tokenizer is kept: {rate:.2%} of "
            f"{corpus.name}'s training tokens are <unk> ({tokens.unknown:,} of {len(tokens):,})")
        return tok, {"tokenizer": tok.kind, "unknown_rate": rate}
    if cfg.extend_vocab and (not isinstance(ckpt.model.decoder, nn.Linear)
                             or getattr(ckpt.model.config, "adaptive_softmax", "")):
        raise ConfigError("--extend-vocab: the parent's decoder is an adaptive softmax, whose clusters are fixed by "
                          "token frequency and cannot take new rows; fine-tune without it (new characters become "
                          "<unk>)")
    counts, total = unseen_symbols(tok, (text for text, _ in corpus.pieces("train")))
    about: dict[str, Any] = {"tokenizer": "char", "unseen_symbols": len(counts),
                             "unseen_rate": sum(counts.values()) / max(total, 1), "added_symbols": 0}
    if not counts:
        log(f"every character of {corpus.name}'s training split is in the parent's vocabulary")
        return tok, about
    if not cfg.extend_vocab:
        log(f"warning: {describe_unseen(counts, total)}; they are encoded as <unk> (id 1, sampled as U+FFFD), one "
            "symbol for all of them: pass --extend-vocab to give each its own row")
        return tok, about
    min_count = int(tok.options.get("min_count", 1))
    added = [symbol for symbol, n in counts.items() if n >= min_count]  # as the parent's tokenizer was built
    grown = CharTokenizer([END, UNK] + sorted(tok.pieces[2:] + added, key=ord), dict(tok.options))
    kept_out = len(counts) - len(added)
    log(f"--extend-vocab: {describe_unseen(counts, total)}; each gets new embedding and decoder rows "
        f"(vocabulary {tok.vocab_size:,} -> {grown.vocab_size:,})"
        + (f"; {kept_out:,} seen fewer than the parent's --min-count {min_count} times stay <unk>" if kept_out else ""))
    about["added_symbols"] = len(added)
    return grown, about


def grow_rows(parent: nn.Module, old: Tokenizer, new: Tokenizer, child: nn.Module, seed: int) -> dict[str, Tensor]:
    """The child's state dict: the parent's tensors, each vocabulary-sized one grown to ``new``'s vocabulary.

    Every symbol of ``old`` keeps its rows bit for bit, at its id in ``new`` (a char
    vocabulary is sorted by code point, so ids shift). A new symbol's row is the mean of
    the old rows plus noise of :data:`NOISE` times each coordinate's spread (Hewitt 2021,
    "Initializing New Word Embeddings for Pretrained Language Models"):

    - in the embedding, the mean is an input of the scale the trained recurrent weights
      expect (a fresh N(0, 1) row would not be);
    - in the decoder (rows and bias), the new logit is the mean of the old logits, and
      exp(mean) <= mean(exp), so each new symbol starts below probability 1/V and the
      parent's predictions of the old symbols shrink by at most a factor 1 + k/V: the
      fine-tune starts where the parent stands.

    The noise, from a generator seeded by ``seed``, makes the new rows differ from each other.
    """
    new_ids = {piece: i for i, piece in enumerate(new.pieces)}
    index = torch.tensor([new_ids[piece] for piece in old.pieces])  # old id -> new id
    generator = torch.Generator().manual_seed(seed)
    old_state, grown, done = parent.state_dict(), {}, {}
    for name, target in child.state_dict().items():
        source = old_state[name]
        if source.shape == target.shape:
            grown[name] = source
            continue
        assert source.shape[0] == old.vocab_size and target.shape[0] == new.vocab_size, name
        assert source.shape[1:] == target.shape[1:], name
        if source.data_ptr() not in done:  # a tied matrix is grown once
            done[source.data_ptr()] = _grow(source, index, new.vocab_size, generator)
        grown[name] = done[source.data_ptr()]
    return grown


def _grow(rows: Tensor, index: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """rows [V, ...] -> [size, ...]: rows[i] at index[i], the others the mean row plus a little noise."""
    spread = rows.std(0) if rows.shape[0] > 1 else torch.zeros_like(rows[0])
    noise = torch.randn((size, *rows.shape[1:]), generator=generator, dtype=rows.dtype)
    out = rows.mean(0) + NOISE * spread * noise
    out[index] = rows
    return out


def freeze_embeddings(model: nn.Module, log: Log) -> None:
    """``--freeze-embeddings``: the embedding matrix gets no gradient, so no optimiser (nor weight decay) moves it."""
    model.embedding.weight.requires_grad_(False)
    if model.config.tie:
        log("--freeze-embeddings with --tie: the embedding is also the decoder's matrix, so both stay fixed; "
            "the decoder's bias and the recurrent layers learn")


def parent_record(parent: Parent | None, last: Checkpoint | None, cfg: TrainConfig) -> dict[str, Any] | None:
    """config.json's ``train.parent`` for this run: the new parent's, or the one a resumed run recorded."""
    if parent is not None:
        return parent.record
    record = (last.config.get("train") or {}).get("parent") if last is not None else None
    if cfg.init_from and (record or {}).get("init_from") != cfg.init_from:
        raise ConfigError("--init-from starts a new run from a checkpoint; --resume continues the run in --out: "
                          "use one or the other")
    return record


def pass_settings(saved_train: dict[str, Any], train_given: dict[str, Any]) -> dict[str, Any]:
    """What ``--resume --finetune`` changes in the run's settings: averaged SGD at a constant rate.

    The run's ``--lr`` stays (AWD-LSTM fine-tunes at its training rate) unless the run
    trained with AdamW, whose rate means nothing to SGD: then ``--lr`` must be given.
    """
    optimizer = train_given.get("optimizer", "ntasgd")
    if optimizer != "ntasgd":
        raise ConfigError(f"--finetune steps averaged SGD (--optimizer ntasgd); drop --optimizer {optimizer}")
    if train_given.get("average", "none") != "none":
        raise ConfigError("--finetune averages by itself (Polyak, from its first step); drop --average")
    was = saved_train.get("optimizer", TrainConfig.optimizer)
    if was not in SGD_FAMILY and "lr" not in train_given:
        raise ConfigError(f"--finetune steps SGD, but this run trained with {was}, whose --lr "
                          f"{saved_train.get('lr', TrainConfig.lr)} is no SGD rate: give --lr (AWD-LSTM fine-tunes "
                          "at its SGD training rate, 30)")
    changes: dict[str, Any] = {"optimizer": "ntasgd", "average": "none"}
    if "schedule" not in train_given:
        changes["schedule"] = "constant"
    return changes


def best_folder(out: str | Path) -> Path:
    """``OUT/best`` (or the copy a crash mid-save left), where the fine-tune pass starts."""
    for folder in (Path(out) / "best", Path(out) / ".best.old"):
        if (folder / CONFIG_FILE).exists():
            return folder
    raise ConfigError(f"--finetune: {out} has no best/ checkpoint to start from")


def load_best_weights(model: nn.Module, tokenizer: Tokenizer, out: str | Path, device: torch.device) -> None:
    """Put the run's best/ weights (with averaging, the average that was saved) into ``model``."""
    best = load_checkpoint(best_folder(out), device)
    if best.tokenizer.pieces != tokenizer.pieces:
        raise CheckpointError(f"{best.folder} and {Path(out) / 'last'} hold different tokenizers: they are not "
                              "one run's")
    try:
        model.load_state_dict(best.model.state_dict())
    except RuntimeError as exc:
        raise CheckpointError(f"{best.folder} does not fit the run's last/ checkpoint ({str(exc)[:160]})") from None


def start_pass(saved: dict[str, Any], averaging: Any) -> TrainState:
    """The state the fine-tune pass starts in: the run's step, tokens and time go on, the streams
    restart from zero, early stopping's best stays the run's, and averaging starts now."""
    assert averaging is not None and averaging.trigger is not None  # cfg.optimizer is ntasgd
    state = TrainState(step=saved["step"], epoch=saved["epoch"] + 1, tokens=saved["tokens"],
                       train_seconds=float(saved["train_seconds"]), best_val=float(saved["best_val"]))
    averaging.start(state.step)
    averaging.trigger.fired_at = state.step  # averaged from the first step: nothing left for the trigger to decide
    return state


def begin_pass(run: Any, state: TrainState) -> None:
    """Refuse a pass with nothing left of the run's budget (it would stop before its first step);
    else note it in metrics.jsonl and the log."""
    spent = run.budget_spent(state)
    if spent:
        raise ConfigError(f"--finetune: the run is at step {state.step} and its --{spent} budget is spent "
                          "(--steps, --epochs and --time count the whole run, as with --resume); give a larger one, "
                          f"e.g. --steps {state.step + 1000}")
    folder, lr = run.folder, run.cfg.lr
    best = read_config(best_folder(folder.out)).get("metrics") or {}
    folder.forget_metrics_after(state.step)
    folder.log_metrics({"kind": "finetune", "step": state.step, "best_step": best.get("step"),
                        "best_val_loss": best.get("val_loss"), "lr": lr})
    val = best.get("val_loss")
    run.log(f"fine-tune pass (AWD-LSTM): from best/ (step {best.get('step')}"
            + (f", val loss {val:.4f}" if isinstance(val, (int, float)) else "") + "), "
            f"averaged SGD at --lr {lr:g} with a fresh optimiser; the run's steps continue from {state.step}")
