"""Typed, documented configurations: the model's shape and training.

:class:`ModelConfig` and :class:`TrainConfig`: every field has a default a beginner can
run and a one-line help text; the CLI builds its flags from these fields (``lmgen train
--help`` shows the same text and default), and a TOML recipe uses the same names
(:func:`load_recipe`). How ``lmgen sample`` and ``lmgen repl`` choose tokens is
:mod:`lmgen.generation`'s. ``__post_init__`` validates at construction and names the offending flag, e.g.
``--dropout must be in [0, 1), got 1.5``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

CELLS = ("lstm", "gru", "rnn", "window")
TOKENIZERS = ("char", "word", "spm")
OPTIMIZERS = ("adamw", "sgd", "ntasgd")
SCHEDULES = ("cosine", "plateau", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_THREADS = 1024


def _help(text: str, **kw: Any) -> Any:
    """A dataclass field whose metadata carries the flag's help text."""
    return field(metadata={"help": text}, **kw)


def flag(name: str) -> str:
    """``spm_vocab`` -> ``--spm-vocab``: how a field is spelled on the command line."""
    return "--" + name.replace("_", "-")


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{flag(name)} must be {rule}, got {value!r}")


def _whole(value: Any) -> bool:
    """An int that is not a bool (``true`` is not a whole number of layers)."""
    return isinstance(value, int) and not isinstance(value, bool)


_SIZES = re.compile(r"\s*\d+(\s*,\s*\d+)*\s*")


def parse_sizes(text: str) -> int | list[int]:
    """``"256"`` -> 256, ``"1150,1150,400"`` -> [1150, 1150, 400]: ``--hidden`` as text.

    >>> parse_sizes("1150, 1150,400")
    [1150, 1150, 400]
    """
    if not _SIZES.fullmatch(text):
        raise ConfigError(f"--hidden must be a size or sizes such as 1150,1150,400, got {text!r}")
    sizes = [int(part) for part in text.split(",")]
    return sizes[0] if len(sizes) == 1 else sizes


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, "one of " + ", ".join(choices), value)


def _check_finite(config: Any) -> None:
    """Every real-valued setting is a finite number: ``--epochs inf`` or ``--lr nan`` parse
    as floats, and would pass a range check (inf > 0) to fail much later."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float):
            _check(math.isfinite(value), f.name, "a finite number", value)


@dataclass
class ModelConfig:
    """Shape of an :class:`~lmgen.model.RNNLM`: embedding -> L recurrent layers -> decoder."""

    cell: str = _help("recurrent cell: lstm, gru or rnn (tanh, Elman); window = fixed-window feed-forward "
                      "LM (Bengio et al. 2003)", default="lstm")
    vocab_size: int = _help("number of tokens (set from the tokenizer)", default=0)
    embed: int = _help("embedding size E", default=64)
    # A list (TOML ``hidden = [1150, 1150, 400]``, CLI ``--hidden 1150,1150,400``) gives each
    # layer its own size, as AWD-LSTM does so that the last layer can equal the embedding
    # for tying; a list of equal sizes is stored as one number (the fused module runs it).
    hidden: int | list[int] = _help("hidden size H of every recurrent layer, or one size per layer, e.g. "
                                    "1150,1150,400 (then --layers is the list's length)", default=256)
    layers: int = _help("number of stacked recurrent layers L", default=1)
    dropout: float = _help("dropout on embeddings, between layers and before the decoder, a new mask every "
                           "step (Zaremba et al. 2014); each --dropout-input/-hidden/-output given replaces it "
                           "at its place", default=0.0)
    dropout_input: float = _help("locked (variational) dropout on the embedding output: one mask per sequence, "
                                 "the same at every step (Gal & Ghahramani 2016); -1 = use --dropout", default=-1.0)
    dropout_hidden: float = _help("locked dropout between recurrent layers; -1 = use --dropout", default=-1.0)
    dropout_output: float = _help("locked dropout on the last layer's output, before the decoder; "
                                  "-1 = use --dropout", default=-1.0)
    dropout_embed: float = _help("embedding dropout: drop whole tokens' embedding rows, a new choice per batch "
                                 "(Gal & Ghahramani 2016)", default=0.0)
    weight_drop: float = _help("DropConnect on the hidden-to-hidden matrices W_hh, a new mask per batch "
                               "(Merity et al. 2018); evaluation and sampling use the full weights", default=0.0)
    tie: bool = _help("tie decoder and embedding weights (needs --embed equal to the last layer's --hidden)",
                      default=False)
    adaptive_softmax: str = _help("adaptive softmax (Grave et al. 2017): cluster cut-offs in token ranks by "
                                  "training frequency, e.g. 2000,10000; training is cheaper, evaluation and "
                                  "sampling still get exact full probabilities (empty = the full softmax)",
                                  default="")
    adaptive_div: float = _help("adaptive softmax: each tail cluster's projection is this many times narrower "
                                "than the previous one's", default=4.0)
    window: int = _help("--cell window: how many previous tokens the model sees", default=5)
    init_range: float = _help("if > 0, draw every weight from U(-r, r) (Zaremba et al. 2014) instead of "
                              "lmgen's default initialisation", default=0.0)

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_choice("cell", self.cell, CELLS)
        _check(self.vocab_size >= 0, "vocab_size", ">= 0", self.vocab_size)
        self._normalise_hidden()
        for name in ("embed", "layers", "window") + (() if isinstance(self.hidden, list) else ("hidden",)):
            value = getattr(self, name)
            _check(_whole(value) and value >= 1, name, "a whole number >= 1", value)
        _check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        for name in ("dropout_input", "dropout_hidden", "dropout_output"):
            value = getattr(self, name)
            _check(value == -1.0 or 0.0 <= value < 1.0, name, "in [0, 1), or -1 for --dropout", value)
        for name in ("dropout_embed", "weight_drop"):
            _check(0.0 <= getattr(self, name) < 1.0, name, "in [0, 1)", getattr(self, name))
        if self.cell == "window" and (self.weight_drop or self.dropout_embed or self.locked_dropout()):
            raise ConfigError("--weight-drop, --dropout-embed and locked dropout are for recurrent cells, "
                              "not --cell window")
        _check(self.init_range >= 0, "init_range", ">= 0", self.init_range)
        if self.tie and self.embed != self.top:
            sizes = ",".join(map(str, self.sizes)) if isinstance(self.hidden, list) else self.hidden
            raise ConfigError(f"--tie needs --embed equal to --hidden (the last layer's size), got --embed "
                              f"{self.embed} --hidden {sizes}")
        _check(self.adaptive_div >= 1.0, "adaptive_div", ">= 1", self.adaptive_div)
        cuts = self.cutoffs()  # validates --adaptive-softmax
        if cuts and int(self.top // self.adaptive_div ** len(cuts)) < 1:
            raise ConfigError(f"--adaptive-softmax: {len(cuts)} tail clusters, each --adaptive-div "
                              f"{self.adaptive_div:g} times narrower, leave no units of the last layer's "
                              f"{self.top}; use fewer cut-offs or a smaller --adaptive-div")
        if self.adaptive_softmax and self.tie:
            raise ConfigError("--adaptive-softmax and --tie cannot be combined: the adaptive softmax's clusters "
                              "have no one matrix to share with the embedding")

    def _normalise_hidden(self) -> None:
        """A list of sizes -> ``layers`` from its length; equal sizes -> one number."""
        if isinstance(self.hidden, str) and _SIZES.fullmatch(self.hidden):  # TOML hidden = "1150,1150,400"
            self.hidden = parse_sizes(self.hidden)
        if isinstance(self.hidden, (list, tuple)):
            sizes = list(self.hidden)
            _check(bool(sizes) and all(_whole(h) and h >= 1 for h in sizes), "hidden",
                   "whole numbers >= 1", self.hidden)
            if self.cell == "window":
                raise ConfigError("--cell window has one hidden size; per-layer --hidden sizes are for recurrent cells")
            if self.layers not in (1, len(sizes)):
                raise ConfigError(f"--hidden lists {len(sizes)} sizes but --layers is {self.layers}: "
                                  f"give one size per layer, or leave --layers out")
            self.layers = len(sizes)
            self.hidden = sizes[0] if len(set(sizes)) == 1 else sizes

    @property
    def sizes(self) -> list[int]:
        """Hidden size of each layer, [H_0, ..., H_{L-1}]."""
        return list(self.hidden) if isinstance(self.hidden, list) else [self.hidden] * self.layers

    @property
    def top(self) -> int:
        """The last layer's size: what the decoder reads."""
        return self.hidden[-1] if isinstance(self.hidden, list) else self.hidden

    @property
    def width(self) -> int:
        """The widest layer: the state is [L, B, width], layer l using its first H_l units."""
        return max(self.hidden) if isinstance(self.hidden, list) else self.hidden

    def hidden_text(self) -> str:
        """``2x200`` (equal layers) or ``1150,1150,400``: the shape as the logs and reports print it."""
        return ",".join(map(str, self.hidden)) if isinstance(self.hidden, list) else f"{self.layers}x{self.hidden}"

    def cutoffs(self) -> list[int]:
        """``--adaptive-softmax`` as a list of increasing cut-offs (empty: full softmax)."""
        text = self.adaptive_softmax.strip() if isinstance(self.adaptive_softmax, str) else None
        if text is None:
            raise ConfigError(f"--adaptive-softmax must be cut-offs such as 2000,10000, got {self.adaptive_softmax!r}")
        if not text:
            return []
        try:
            cuts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ConfigError(f"--adaptive-softmax must be cut-offs such as 2000,10000, got {text!r}") from None
        if any(c < 1 for c in cuts) or cuts != sorted(set(cuts)):
            raise ConfigError(f"--adaptive-softmax cut-offs must be increasing whole numbers >= 1, got {text!r}")
        if self.vocab_size and cuts[-1] >= self.vocab_size:
            raise ConfigError(f"--adaptive-softmax cut-offs must be below the vocabulary size {self.vocab_size:,}, "
                              f"got {text!r}")
        return cuts

    def locked_dropout(self) -> bool:
        """True when any place uses locked dropout (the model then runs its layers one by one)."""
        return max(self.dropout_input, self.dropout_hidden, self.dropout_output) >= 0.0


@dataclass
class TrainConfig:
    """How to train: data, tokenizer, optimisation, budget, output."""

    corpus: str = _help("corpus name (see `lmgen corpus list`) or a text file / folder", default="python-stdlib")
    tokenizer: str = _help("tokenizer: char, word or spm (SentencePiece)", default="char")
    spm_vocab: int = _help("SentencePiece vocabulary size", default=8000)
    spm_type: str = _help("SentencePiece model: unigram or bpe", default="unigram")
    max_vocab: int = _help("word tokenizer: keep at most this many words (0 = all)", default=0)
    min_count: int = _help("word tokenizer: drop words seen fewer times", default=1)
    encoding_errors: str = _help("non-UTF-8 bytes in the corpus: strict (error) or replace", default="strict")
    separator: str = _help("your own text file or folder: what ends a document (each ends with [END]): none (the "
                           "file, or each file of a folder, is one), line (each non-empty line: names, titles), "
                           "blank (paragraphs between blank lines), or a regular expression whose matches separate "
                           "documents, e.g. '\\n%%\\n'; whole documents then go to the splits (see docs/corpora.md). "
                           "Registry corpora keep their own", default="none")
    valid_fraction: float = _help("your own text: the share of documents (of characters with --separator none) "
                                  "held out for validation; registry corpora keep their published splits",
                                  default=0.05)
    test_fraction: float = _help("your own text: the share held out for testing, as --valid-fraction", default=0.05)
    split_seed: int = _help("your own text with --separator line, blank or REGEX: seed of the draw of documents to "
                            "the splits (apart from --seed, so runs with other seeds share one split)", default=0)

    batch: int = _help("B: number of parallel streams per step", default=32)
    bptt: int = _help("T: tokens per window of truncated back-propagation", default=64)
    steps: int = _help("stop after this many optimiser steps (0 = no step limit)", default=0)
    epochs: float = _help("stop after this many passes over the training split (0 = no limit)", default=0.0)
    time: str = _help("stop after this much training time, e.g. 90s, 10m, 1h (empty = no limit)", default="")

    optimizer: str = _help("optimiser: adamw, sgd, or ntasgd (SGD that switches to averaging the weights when "
                           "validation stops improving; Merity et al. 2018)", default="adamw")
    lr: float = _help("peak learning rate", default=1e-2)
    weight_decay: float = _help("decoupled weight decay (AdamW) / L2 (SGD)", default=0.0)
    momentum: float = _help("SGD momentum", default=0.0)
    clip: float = _help("clip the gradient norm to this value (0 = off)", default=1.0)
    schedule: str = _help("learning-rate schedule: cosine (after warm-up), plateau, step (per epoch) or constant",
                          default="cosine")
    warmup: int = _help("warm-up steps (linear from 0 to --lr)", default=30)
    min_lr: float = _help("cosine floor, as a fraction of --lr", default=0.1)
    decay_after: int = _help("step: epochs at the full rate before the per-epoch decay starts", default=4)
    decay_factor: float = _help("step: multiply the LR by this at the start of every later epoch", default=0.5)
    plateau_factor: float = _help("plateau: multiply the LR by this when validation stops improving", default=0.25)
    plateau_patience: int = _help("plateau: evaluations without improvement before decaying", default=1)
    patience: int = _help("early stopping: evaluations without improvement before stopping (0 = off)", default=0)
    nonmono: int = _help("ntasgd: start averaging when validation is worse than the best of the evaluations "
                         "before the last N", default=5)
    average: str = _help("weight average that evaluation, best/ and the saved weights use: none, polyak, or "
                         "ema:DECAY (e.g. ema:0.999); training steps the raw weights", default="none")
    ar: float = _help("activation regularisation: adds AR x mean(h^2) of the last layer's dropped output "
                      "(Merity et al. 2018)", default=0.0)
    tar: float = _help("temporal activation regularisation: adds TAR x mean((h_t - h_t-1)^2) of the last "
                       "layer's output", default=0.0)
    bptt_jitter: float = _help("vary the window length per batch: T (T/2 with probability 5%%) plus N(0, this^2) "
                               "tokens, at least 5; the LR scales with the length (AWD-LSTM: 5; 0 = fixed T)",
                               default=0.0)

    eval_every: int = _help("evaluate on the validation split (and save) every N steps", default=200)
    eval_tokens: int = _help("validation tokens per periodic evaluation (0 = the whole split)", default=0)
    log_every: int = _help("write a training row to metrics.jsonl every N steps", default=10)
    seed: int = _help("random seed: fixes initialisation, dropout and data order", default=1337)
    device: str = _help("device: auto (CUDA when present), cpu or cuda", default="auto")
    amp: bool = _help("bf16 autocast on CUDA (ignored on CPU)", default=True)
    compile: bool = _help("compile the model with torch.compile", default=False)
    threads: str = _help("CPU threads: auto = the cores other processes leave free, rechecked while training "
                         "(see lmgen/cores.py), or a number", default="auto")
    max_nonfinite: int = _help("stop after this many non-finite losses in a row (each is skipped)", default=10)
    out: str = _help("run folder: checkpoints (last/, best/) and metrics.jsonl", default="checkpoints/run")
    resume: bool = _help("continue the run in --out from its last checkpoint", default=False)
    # Training from an existing checkpoint (lmgen/finetune.py, docs/finetune.md).
    init_from: str = _help("fine-tune: start from this checkpoint's (or run folder's) weights and tokenizer, with "
                           "a fresh optimiser and schedule; model flags default to the parent's (ones that change "
                           "its architecture are refused), its optimiser settings carry over, and --lr defaults to "
                           "the parent's / 2 (empty = a new model)", default="")
    extend_vocab: bool = _help("--init-from with a char tokenizer: give the corpus's characters that the parent "
                               "never saw their own new embedding and decoder rows (else they become <unk>)",
                               default=False)
    freeze_embeddings: bool = _help("keep the embedding matrix fixed (with --tie the decoder's too: they are one "
                                    "matrix)", default=False)
    finetune: bool = _help("with --resume: AWD-LSTM's fine-tune pass: restart from the run's best/ weights with "
                           "averaged SGD (ntasgd, averaging from the first step), a fresh optimiser and a constant "
                           "--lr (default: the run's), in the same run folder; the budget counts the whole run",
                           default=False)
    progress: bool = _help("show a progress bar", default=True)

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_choice("tokenizer", self.tokenizer, TOKENIZERS)
        _check_choice("spm_type", self.spm_type, ("unigram", "bpe"))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("encoding_errors", self.encoding_errors, ("strict", "replace"))
        _check_documents(self)
        for name in ("batch", "bptt", "eval_every", "log_every", "spm_vocab", "min_count"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, "a whole number >= 1", value)
        for name in ("steps", "warmup", "patience", "eval_tokens", "max_vocab", "max_nonfinite"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, "a whole number >= 0", value)
        self.threads = str(self.threads)
        _check(self.threads == "auto" or (self.threads.isdigit() and int(self.threads) <= MAX_THREADS), "threads",
               f"auto or a whole number <= {MAX_THREADS}", self.threads)
        _check(0 <= self.seed <= MAX_SEED, "seed", "a whole number in [0, 2^63)", self.seed)
        _check_out(self.out)
        _check(self.epochs >= 0, "epochs", ">= 0", self.epochs)
        _check(self.lr > 0, "lr", "> 0", self.lr)
        _check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _check(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        _check(self.clip >= 0, "clip", ">= 0", self.clip)
        _check(0 <= self.min_lr <= 1, "min_lr", "in [0, 1]", self.min_lr)
        _check(self.decay_after >= 0, "decay_after", ">= 0", self.decay_after)
        _check(0 < self.decay_factor <= 1, "decay_factor", "in (0, 1]", self.decay_factor)
        _check(0 < self.plateau_factor < 1, "plateau_factor", "in (0, 1)", self.plateau_factor)
        _check(self.plateau_patience >= 0, "plateau_patience", ">= 0", self.plateau_patience)
        _check(isinstance(self.nonmono, int) and self.nonmono >= 1, "nonmono", "a whole number >= 1", self.nonmono)
        self.average_decay()  # validates the spelling
        _check(self.ar >= 0, "ar", ">= 0", self.ar)
        _check(self.tar >= 0, "tar", ">= 0", self.tar)
        _check(self.bptt_jitter >= 0, "bptt_jitter", ">= 0", self.bptt_jitter)
        if self.optimizer == "ntasgd" and self.average != "none":
            raise ConfigError("--optimizer ntasgd averages by itself (Polyak, from its trigger); drop --average")
        self.time_seconds()  # validates the spelling
        self._check_start()

    def _check_start(self) -> None:
        """--init-from, --extend-vocab, --freeze-embeddings and --finetune: the combinations that mean something."""
        if self.finetune and not self.resume:
            raise ConfigError("--finetune is a pass over an existing run: use it with --resume --out RUN")
        if self.extend_vocab and not self.init_from:
            raise ConfigError("--extend-vocab adds rows to a parent's vocabulary: use it with --init-from CKPT")
        if self.extend_vocab and self.freeze_embeddings:
            raise ConfigError("--extend-vocab and --freeze-embeddings exclude each other: the new symbols' rows "
                              "would never leave their initial values")
        if self.init_from and not self.resume:
            from pathlib import Path

            parent, out = Path(self.init_from).expanduser().resolve(), Path(self.out).expanduser().resolve()
            if parent == out or out in parent.parents:  # --overwrite would delete the parent before it is read
                raise ConfigError(f"--init-from {self.init_from} lies inside --out {self.out}, which the new run "
                                  "writes; choose another --out")

    def average_decay(self) -> float | None:
        """``--average``: None (off), 0.0 for polyak (an equal-weight mean), or the EMA decay."""
        if self.average == "none":
            return None
        if self.average == "polyak":
            return 0.0
        match = re.fullmatch(r"ema:(0?\.[0-9]+)", self.average)
        if not match or not 0.0 < float(match.group(1)) < 1.0:
            raise ConfigError(f"--average must be none, polyak or ema:DECAY with 0 < DECAY < 1 (e.g. ema:0.999), "
                              f"got {self.average!r}")
        return float(match.group(1))

    def time_seconds(self) -> float:
        """``--time`` in seconds (0 when unset)."""
        return parse_duration(self.time, "time")


def _check_documents(config: TrainConfig) -> None:
    """--separator, --valid-fraction, --test-fraction and --split-seed of a user's text file."""
    for name in ("valid_fraction", "test_fraction"):
        _check(0.0 <= getattr(config, name) < 1.0, name, "in [0, 1)", getattr(config, name))
    _check(config.valid_fraction + config.test_fraction < 1.0, "valid_fraction",
           "below 1 - --test-fraction (the rest trains)", config.valid_fraction)
    _check(isinstance(config.split_seed, int) and 0 <= config.split_seed <= MAX_SEED, "split_seed",
           "a whole number in [0, 2^63)", config.split_seed)
    _check(config.separator != "file", "separator", "none, line, blank or a regular expression (none makes each "
           "file one document; write (?:file) for the text 'file')", config.separator)
    if config.separator not in ("none", "line", "blank"):
        from .corpora.reading import separator_pattern  # only for a regex: `lmgen --help` stays quick
        from .errors import CorpusError

        try:
            separator_pattern(config.separator)
        except CorpusError as exc:
            raise ConfigError(str(exc)) from None


_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def _check_out(out: str) -> None:
    """``--out`` must name a folder of its own: never empty, the file-system root or the home folder,
    whose files a run (and ``--overwrite``) would mix with or remove."""
    from pathlib import Path

    if not str(out).strip():
        raise ConfigError("--out must name a run folder, got an empty path")
    resolved = Path(out).expanduser().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise ConfigError(f"--out must be a folder of its own, not {resolved}: e.g. --out checkpoints/run")


def parse_duration(text: str, name: str = "time") -> float:
    """``"90s"``, ``"10m"``, ``"1.5h"`` or ``"120"`` -> seconds."""
    if text in ("", "0"):
        return 0.0
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag(name)} must be a positive duration such as 90s, 10m or 1h, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


# A whole number is fine text too (TOML `threads = 2`, an older run's `threads: 0`).
_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str, int)}


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a config from a dict, naming unknown keys (e.g. typos in a TOML file) and values of
    the wrong type (``progress = "no"`` is a string, not false; ``hidden = 1e30`` not a whole number)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    for name, value in values.items():
        types = _TYPES.get(str(fields[name].type))
        # bool is an int subclass: true is not a whole number of layers
        wrong = types is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool)))
        if wrong:
            kind = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}
            raise ConfigError(f"{flag(name)} must be {kind[str(fields[name].type)]}, got {value!r}")
    values = {k: str(v) if str(fields[k].type) == "str" and isinstance(v, int) else v for k, v in values.items()}
    return cls(**values)


def read_recipe(path: str) -> dict[str, Any]:
    """A TOML recipe (``--config``) as flat settings: ``[model]`` and ``[train]`` tables merged,
    dashes in keys read as underscores (``bptt-jitter`` = ``bptt_jitter``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("model", "train"):
            flat.update(value)
        else:
            flat[key] = value
    return {k.replace("-", "_"): v for k, v in flat.items()}


def split_settings(settings: dict[str, Any]) -> tuple[dict, dict]:
    """Flat settings -> (model settings, train settings); an unknown name is a ConfigError naming its flag."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - model_names - train_names - {"overwrite"})
    if unknown:
        raise ConfigError("unknown setting(s): " + ", ".join(flag(u) for u in unknown) + "; see `lmgen train --help`")
    model = {k: v for k, v in settings.items() if k in model_names}
    train = {k: v for k, v in settings.items() if k in train_names}
    return model, train


def load_recipe(path: str) -> tuple[TrainConfig, ModelConfig]:
    """A configs/*.toml recipe as (TrainConfig, ModelConfig), read as ``--config`` reads it."""
    model, train = split_settings(read_recipe(path))
    return from_dict(TrainConfig, train), from_dict(ModelConfig, model)
