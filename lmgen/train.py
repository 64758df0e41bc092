"""The training loop: teacher-forced cross-entropy with truncated BPTT.

Read it top to bottom: :func:`train` claims the run folder; :func:`_train` resolves the
corpus, builds or loads the tokenizer, encodes the splits to memmaps, builds the model
and optimiser; :func:`_loop` then steps through windows of T tokens on B streams
(``--bptt-jitter``: of lengths drawn around T), carrying the hidden state from window
to window and cutting the graph between them. The loss is the cross-entropy, plus the
activation penalties AR and TAR when asked (:mod:`lmgen.loss`). Every ``--eval-every``
steps: validation loss, ``last/`` checkpoint, and ``best/`` when it improved; with
``--average`` or NT-ASGD those see the averaged weights (:mod:`lmgen.averaging`).
:class:`~lmgen.train_state.TrainState` is where the run stands; with the optimiser,
schedule and random generators it is what ``last/train_state.pt`` keeps, so that
``--resume`` continues bit for bit. Starting from another checkpoint (``--init-from``) and
AWD-LSTM's fine-tune pass (``--resume --finetune``) are :mod:`lmgen.finetune`'s.

Under ``torchrun`` (see :mod:`lmgen.distributed`) the same loop runs on W ranks, each on
its contiguous share of the B streams, the model wrapped in DistributedDataParallel.
The loop calls :class:`~lmgen.distributed.World` the same way on every rank and in one
process (where its collectives are the identity); only rank 0 writes
(:class:`~lmgen.runs.RunFolder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import cores, corpora, distributed, finetune
from .averaging import Averaging, load_raw_weights, make_averaging
from .checkpoint import Checkpoint, load_checkpoint, load_train_state
from .config import ModelConfig, TrainConfig
from .data import StreamBatcher, TokenFile, WindowLengths, encode_split, prepare_tokenizer
from .devices import resolve_device
from .errors import ConfigError, LmgenError
from .evaluate import autocast_for, perplexity
from .files import physical_memory
from .loss import step_loss
from .model import RNNLM, State, build_model, detach_state, estimate_activation_bytes, estimate_parameters
from .runs import RunFolder, last_checkpoint_folder
from .schedule import Schedule, make_optimizer
from .softmax import token_counts
from .tokenizer import Tokenizer
from .train_state import TrainState, check_saved

Log = Callable[[str], None]
OnStep = Callable[[int], None]


@dataclass
class RunResult:
    """What a finished (or interrupted) run reports."""

    out: Path
    steps: int
    tokens: int
    train_seconds: float
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    stopped_by: str  # "steps" | "epochs" | "time" | "early-stopping" | "interrupted"


class _StopOnSignal:
    """First Ctrl-C / SIGTERM asks the loop to stop after the current step and save; a second aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _Meter:
    """Mean training loss (and AR, TAR penalties) and tokens per second since the last log line."""

    def __init__(self, tokens: int):
        self.total, self.count, self.since, self.tokens = 0.0, 0, time.perf_counter(), tokens
        self.penalties = [0.0, 0.0]

    def add(self, loss: float, penalties: list[float]) -> None:
        self.total += loss
        self.count += 1
        for i, value in enumerate(penalties):
            self.penalties[i] += value

    def mean_penalties(self) -> list[float]:
        """Mean AR and TAR penalties since the last lap (read before :meth:`lap` resets them)."""
        return [value / max(self.count, 1) for value in self.penalties]

    def mean(self) -> float:
        return self.total / self.count

    def lap(self, tokens: int) -> tuple[float, float]:
        """Mean loss and tokens per second since the last lap; the next lap starts now."""
        now = time.perf_counter()
        loss, rate = self.mean(), (tokens - self.tokens) / max(now - self.since, 1e-9)
        self.total, self.count, self.since, self.tokens = 0.0, 0, now, tokens
        self.penalties = [0.0, 0.0]
        return loss, rate


@dataclass
class _Run:
    """What the loop steps with, set up once by :func:`_train`: settings, data, model, optimiser."""

    cfg: TrainConfig
    world: distributed.World
    device: torch.device
    share: slice  # this rank's streams of the B: [B/W]
    folder: RunFolder
    corpus: corpora.Corpus
    tokenizer: Tokenizer
    batcher: StreamBatcher
    lengths: WindowLengths  # T, or drawn per window (--bptt-jitter)
    valid_tokens: TokenFile | None
    model: RNNLM
    step_model: torch.nn.Module  # the model under DDP and torch.compile: what a step calls
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    averaging: Averaging | None  # --average / --optimizer ntasgd: what evaluation and the saved weights see
    max_steps: float
    max_seconds: float
    log: Log

    def budget_spent(self, s: TrainState) -> str | None:
        """What ends the run now ("steps", "epochs", "time"), or None while budget is left."""
        if s.step >= self.max_steps:
            return "epochs" if self.cfg.epochs and self.max_steps < (self.cfg.steps or math.inf) else "steps"
        if s.train_seconds >= self.max_seconds:
            return "time"
        return None

    def progress(self, s: TrainState) -> float:
        return max(s.step / self.max_steps, s.train_seconds / self.max_seconds)

    def next_window(self, s: TrainState) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's inputs and targets [B/W, t] of the next window, on the device, and its drawn length.

        At the end of the streams a new epoch starts: every stream again from zero state.
        """
        if s.position >= self.batcher.length - 1:
            s.epoch, s.window, s.position, s.hidden = s.epoch + 1, 0, 0, None
        length = self.lengths.draw()
        x, y = self.batcher.span(s.position, length)  # [B, t] each
        s.window, s.position = s.window + 1, s.position + x.shape[1]
        return (x[self.share].to(self.device, non_blocking=True),
                y[self.share].to(self.device, non_blocking=True), length)

    def set_lr(self, s: TrainState, length: int) -> float:
        """Set this step's learning rate; returns the schedule's rate (that of a window of T tokens).

        A drawn window of ``length`` tokens steps at length / T of it, so that every token
        weighs the same whatever the window it lands in (AWD-LSTM, section 4.1).
        """
        lr = self.cfg.lr * self.schedule.scale(s.step, self.progress(s), s.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * (length / self.cfg.bptt)
        return lr

    def loss(self, x: torch.Tensor, y: torch.Tensor, hidden: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """:func:`step_loss` of the step model on this window, under autocast."""
        with autocast_for(self.device, self.cfg.amp):
            return step_loss(self.step_model, x, y, hidden, ar=self.cfg.ar, tar=self.cfg.tar)

    def averaged(self) -> Any:
        """A context in which the model holds the weights evaluation and checkpoints use."""
        return self.averaging.swapped_in() if self.averaging is not None else contextlib.nullcontext()

    def resume_extras(self, s: TrainState) -> dict[str, Any]:
        """What the new options add to train_state.pt; nothing on the default path, whose keys stay as they were."""
        extra: dict[str, Any] = {}
        if self.lengths.jitter:
            extra.update(position=s.position, lengths=self.lengths.state_dict())
        if self.averaging is not None:
            extra["average"] = self.averaging.state_dict()
        return extra

    def skip_update(self, s: TrainState, loss: float, in_a_row: int) -> None:
        """Drop a non-finite step; after ``--max-nonfinite`` in a row, stop with an error."""
        # A NaN state would poison every later window, so the streams restart from zero.
        self.optimizer.zero_grad(set_to_none=True)
        s.hidden = None
        self.log(f"step {s.step}: non-finite loss ({loss}), update skipped ({in_a_row} in a row)")
        if in_a_row >= self.cfg.max_nonfinite:
            raise LmgenError(
                f"{in_a_row} non-finite losses in a row at step {s.step}: training diverged; "
                f"lower --lr (now {self.cfg.lr}) or --clip, and resume from {self.folder.out / 'last'} or start again"
            )

    def log_train(self, s: TrainState, meter: _Meter, lr: float, val_loss: float | None, bar: Any) -> float:
        """A "train" row of metrics.jsonl and the progress bar's text; returns the mean loss since the last."""
        (ar, tar), (train_loss, tok_s) = meter.mean_penalties(), meter.lap(s.tokens)
        penalties = {"ar_penalty": ar} if self.cfg.ar else {}
        penalties.update({"tar_penalty": tar} if self.cfg.tar else {})
        self.folder.log_metrics({"kind": "train", "step": s.step, "epoch": s.epoch, "tokens": s.tokens,
                                 "train_seconds": round(s.train_seconds, 3), "lr": lr,
                                 "train_loss": train_loss, **penalties, "tok_per_s": round(tok_s, 1)})
        bar.set_postfix_str(f"loss {train_loss:.3f} ppl {perplexity(train_loss, 1):.1f} "
                            f"{tok_s:,.0f} tok/s" + (f" val {val_loss:.3f}" if val_loss else ""))
        return train_loss

    def validate(self, s: TrainState, lr: float, say: Log) -> float | None:
        """Validation loss (nats/token; None without a validation split) of the averaged weights, when
        averaging, reported and fed to the schedule and NT-ASGD's trigger.

        Each rank scores a share of the streams; every rank gets the sum.
        """
        if self.valid_tokens is None:
            return None
        cfg = self.cfg
        with self.averaged():
            nll, count = distributed.shared_stream_loss(self.model, self.valid_tokens.tokens, self.world,
                                                        batch=max(cfg.batch, 16), bptt=cfg.bptt,
                                                        max_tokens=cfg.eval_tokens, amp=cfg.amp)
        val_loss = nll / max(count, 1)
        self.schedule.observe(val_loss)
        if self.averaging is not None and self.averaging.observe(val_loss, s.step):
            say(f"step {s.step}: validation stopped improving (--nonmono {cfg.nonmono}): averaging the weights "
                "from here on (NT-ASGD)")
        self.folder.log_metrics({"kind": "eval", "step": s.step, "epoch": s.epoch, "tokens": s.tokens,
                                 "train_seconds": round(s.train_seconds, 3), "val_loss": val_loss,
                                 "val_ppl": perplexity(val_loss, 1), "lr": lr})
        say(f"step {s.step}: val loss {val_loss:.4f} (ppl {perplexity(val_loss, 1):.2f}, "
            f"{val_loss / math.log(2):.3f} bits/token)")
        return val_loss

    def checkpoint(self, s: TrainState, val_loss: float | None, train_loss: float) -> None:
        """Save ``last/``, and ``best/`` when validation improved (or there is none). Every rank calls it."""
        metrics = {"step": s.step, "epoch": s.epoch, "tokens": s.tokens, "train_seconds": round(s.train_seconds, 3),
                   "train_loss": train_loss, "val_loss": val_loss,
                   "val_ppl": perplexity(val_loss, 1) if val_loss is not None else None}
        improved = s.observe(val_loss)
        saved = s.save(self.optimizer, self.schedule, self.world, self.device, extra=self.resume_extras(s))
        corpus = {"name": self.corpus.name, "fingerprint": self.corpus.fingerprint, "source": str(self.cfg.corpus)}
        with self.averaged():  # inference loads the average; train_state.pt above has the raw weights
            self.folder.save(self.model, self.tokenizer, saved, best=improved or self.valid_tokens is None,
                             train_config=asdict(self.cfg), metrics=metrics, corpus=corpus)


def train(
    cfg: TrainConfig,
    model_cfg: ModelConfig | None = None,
    *,
    overwrite: bool = False,
    log: Log = lambda msg: print(msg, file=sys.stderr, flush=True),
    on_step: OnStep | None = None,
) -> RunResult:
    """Train (or with ``cfg.resume`` continue) a model; returns what the run reached.

    ``on_step(step)`` is called before every step (tests inject faults there). Started by
    ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), this process is one rank of a
    data-parallel job: see :mod:`lmgen.distributed`.

    >>> from lmgen.config import TrainConfig, ModelConfig
    >>> train(TrainConfig(corpus="tinyshakespeare", steps=100), ModelConfig(hidden=128))  # doctest: +SKIP
    """
    world = distributed.init(cfg.device)
    folder = RunFolder(Path(cfg.out), writes=world.is_main)
    lock = None
    try:
        if folder.writes:  # rank 0 alone writes; refuse a bad --out before creating anything
            folder.check(cfg.resume, overwrite, touch=False)
            lock = folder.lock()
        result = _train(cfg, finetune.model_config(cfg, model_cfg), world, folder, overwrite=overwrite, log=log,
                        on_step=on_step)
        # Every rank done before any tears the group down: a gloo rank whose peer closed
        # first sometimes aborted at exit ("terminate called", SIGABRT; ~1 run in 6 here).
        world.barrier()
        return result
    except RuntimeError as exc:
        if world.distributed and distributed.is_collective_error(exc):
            raise distributed.lost_contact(world, exc, cfg.out) from exc
        raise
    finally:
        if lock is not None:
            lock.close()
        distributed.close(world)


def _train(cfg: TrainConfig, model_cfg: ModelConfig, world: distributed.World, folder: RunFolder, *,
           overwrite: bool, log: Log, on_step: OnStep | None) -> RunResult:
    """Set up data, model, optimiser and state (fresh or resumed), then run :func:`_loop`."""
    share = world.share(cfg.batch)  # this rank's streams [B/W]; all B with one process
    if not world.is_main:
        log = lambda msg: None  # noqa: E731 -- rank 0 speaks for the job
    folder.check(cfg.resume, overwrite)
    cores.apply(cores.choose(cfg.threads))  # the CLI measured the machine already (cached)
    device = world.device if world.distributed else resolve_device(cfg.device)

    # One rank per machine fills the corpus and token caches; the others then read them.
    with world.local_main_first():
        corpus = corpora.resolve(cfg.corpus, **corpora.resolve_options(asdict(cfg)))
        last, saved = _load_last(cfg, corpus, device) if cfg.resume else (None, None)
        parent = finetune.Parent.load(cfg, model_cfg, corpus, log) if cfg.init_from and last is None else None
        tokenizer = last.tokenizer if last else parent.tokenizer if parent else _make_tokenizer(corpus, cfg)
        train_tokens = encode_split(corpus, tokenizer, "train")
        valid_tokens = encode_split(corpus, tokenizer, "valid") if "valid" in corpus.splits else None
    if cfg.optimizer == "ntasgd" and valid_tokens is None:
        log("warning: --optimizer ntasgd switches to averaging on validation results; this corpus has no "
            "validation split, so it stays plain SGD")
    folder.parent = finetune.parent_record(parent, last, cfg)  # --init-from: config.json's train.parent
    batcher = StreamBatcher(train_tokens.tokens, cfg.batch, cfg.bptt)  # the global layout of B streams
    lengths = WindowLengths(cfg.bptt, cfg.bptt_jitter, cfg.seed)  # the same draws on every rank

    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    if last is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
        _check_memory(model_cfg, cfg.batch, min(lengths.longest, batcher.length - 1), device)
        model = (parent.child(model_cfg, cfg.seed) if parent else build_model(model_cfg)).to(device)
        if model_cfg.adaptive_softmax and parent is None:  # the head holds the most frequent training tokens
            model.decoder.order_by(token_counts(train_tokens.tokens, model_cfg.vocab_size))
    else:
        model = last.model
        if cfg.finetune:  # AWD-LSTM's fine-tune pass restarts from the best weights (lmgen.finetune)
            finetune.load_best_weights(model, tokenizer, cfg.out, device)
        else:
            load_raw_weights(model, saved.get("average"))  # an averaged run saved the average as its weights
    if cfg.freeze_embeddings:
        finetune.freeze_embeddings(model, log)
    model.train()
    folder.check_disk(model.num_parameters())
    optimizer, schedule, averaging = make_optimizer(model, cfg), Schedule(cfg), make_averaging(cfg, model)
    step_model = world.parallel(model)
    if world.rank:
        torch.manual_seed(cfg.seed + world.rank)  # distinct dropout masks on every rank
    step_model = torch.compile(step_model) if cfg.compile else step_model
    state = TrainState()
    if saved is not None and cfg.finetune:
        state = finetune.start_pass(saved, averaging)
    elif saved is not None:
        state = TrainState.restore(saved, optimizer, schedule, world, device, cfg)
        lengths.load_state_dict(saved.get("lengths", {}))
        if averaging is not None and "average" in saved:
            averaging.load_state_dict(saved["average"])
        folder.forget_metrics_after(state.step)

    max_steps, max_seconds = _budget(cfg, batcher.length, lengths, log)
    run = _Run(cfg, world, device, share, folder, corpus, tokenizer, batcher, lengths, valid_tokens, model,
               step_model, optimizer, schedule, averaging, max_steps, max_seconds, log)
    if cfg.finetune:
        finetune.begin_pass(run, state)  # refuses a spent budget, then notes the pass in metrics.jsonl
    _describe(run, train_tokens, resumed_at=state.step if saved is not None else None)
    return _loop(run, state, on_step)


def _loop(run: _Run, s: TrainState, on_step: OnStep | None) -> RunResult:
    """Step until the budget, early stopping or a signal ends the run; evaluate and save on the way."""
    from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

    cfg, world, device, model, optimizer = run.cfg, run.world, run.device, run.model, run.optimizer
    bar = tqdm(total=None if run.max_steps == math.inf else run.max_steps, initial=s.step,
               disable=not cfg.progress or not world.is_main, unit="step", dynamic_ncols=True, file=sys.stderr)
    say = run.log if bar.disable else (lambda msg: bar.write(msg, file=sys.stderr))
    meter = _Meter(s.tokens)
    governor = cores.ThreadGovernor(cores.choose(cfg.threads)) if device.type == "cpu" else None
    nonfinite, train_loss, val_loss, stopped_by = 0, math.nan, None, "steps"
    with _StopOnSignal() as signals:
        while True:
            spent = run.budget_spent(s)
            if spent:
                stopped_by = spent
                break
            if on_step is not None:
                on_step(s.step)
            if governor is not None and (change := governor.tick()):  # a neighbour came or went
                say(change)
            t0 = time.perf_counter()
            x, y, length = run.next_window(s)  # [B/W, t] each; at the streams' end a new epoch
            lr = run.set_lr(s, length)
            if s.hidden is None:
                s.hidden = model.init_state(cfg.batch // world.size, device)
            loss, hidden, terms = run.loss(x, y, s.hidden)  # terms: cross-entropy [, AR, TAR]
            loss.backward()  # under DDP, where the ranks average their gradients: every rank must run it
            # All ranks agree on the mean loss (to skip a non-finite step together) and on stopping.
            *sums, asked = world.sum([*terms.tolist(), float(signals.signum is not None)])
            (loss_value, *penalties), stopping = [v / world.size for v in sums], asked > 0
            if not math.isfinite(total := loss_value + sum(penalties)):
                nonfinite += 1
                run.skip_update(s, total, nonfinite)
                continue
            nonfinite = 0
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if run.averaging is not None:
                run.averaging.update()
            s.hidden = detach_state(hidden)  # truncated BPTT: keep the values, cut the graph
            s.step += 1
            s.tokens += y.numel() * world.size
            meter.add(loss_value, penalties)
            s.train_seconds += time.perf_counter() - t0
            if run.max_seconds != math.inf:
                s.train_seconds = world.broadcast([s.train_seconds])[0]  # rank 0's clock decides --time for all
            bar.update(1)

            if s.step % cfg.log_every == 0 or s.step % cfg.eval_every == 0:
                train_loss = run.log_train(s, meter, lr, val_loss, bar)
            if s.step % cfg.eval_every == 0 or run.budget_spent(s) or stopping:
                if meter.count:
                    train_loss = meter.mean()
                val_loss = run.validate(s, lr, say)
                run.checkpoint(s, val_loss, train_loss)
                if stopping:
                    stopped_by = "interrupted"
                    break
                if cfg.patience and s.evals_since_best >= cfg.patience:
                    stopped_by = "early-stopping"
                    run.log(f"early stopping: no improvement in {cfg.patience} evaluations")
                    break
    bar.close()
    if stopped_by == "interrupted":
        run.log(f"interrupted at step {s.step}; continue with: lmgen train --resume --out {run.folder.out}")
    return RunResult(run.folder.out, s.step, s.tokens, s.train_seconds, train_loss, val_loss,
                     None if s.best_val == math.inf else s.best_val, stopped_by)


def _load_last(cfg: TrainConfig, corpus: corpora.Corpus, device: torch.device) -> tuple[Checkpoint, dict[str, Any]]:
    """``--resume``: the run's last checkpoint and training state; the corpus must be the one it trained on."""
    folder = last_checkpoint_folder(cfg.out)
    last = load_checkpoint(folder, device)
    saved = load_train_state(folder)
    check_saved(saved, last.model, cfg.batch, str(folder / "train_state.pt"))
    if last.config.get("corpus", {}).get("fingerprint") not in (None, corpus.fingerprint):
        raise ConfigError(f"--resume: the corpus {cfg.corpus!r} differs from the one this run was trained on")
    return last, saved


def _make_tokenizer(corpus: corpora.Corpus, cfg: TrainConfig) -> Tokenizer:
    """The ``--tokenizer`` of a new run, fitted to the training split (or found in the cache)."""
    spm, word = cfg.tokenizer == "spm", cfg.tokenizer == "word"
    return prepare_tokenizer(
        corpus, cfg.tokenizer, vocab_size=cfg.spm_vocab if spm else None, model_type=cfg.spm_type if spm else None,
        max_vocab=cfg.max_vocab if word else None, min_count=cfg.min_count if word and cfg.min_count > 1 else None,
    )


def _check_memory(cfg: ModelConfig, batch: int, bptt: int, device: torch.device) -> None:
    """Refuse a model too big for this machine before building it.

    Weights, gradients and two AdamW moments take 16 bytes a parameter. A step on the CPU
    also allocates its activations here (:func:`~lmgen.model.estimate_activation_bytes`),
    which for a wide ``--embed`` dwarf the weights; on a GPU they live in its own memory.
    """
    have = physical_memory()
    if have is None:
        return
    parameters = estimate_parameters(cfg)
    weights = parameters * 16
    activations = estimate_activation_bytes(cfg, batch, bptt) if device.type == "cpu" else 0
    if weights + activations <= have:
        return
    split = (f" ({weights / 2**30:,.0f} for the weights, gradients and optimiser, {activations / 2**30:,.0f} "
             f"for the activations of a step of --batch {batch} x --bptt {bptt})") if activations else ""
    flags = "--hidden, --embed, --layers, --batch or --bptt" if activations else "--hidden, --embed or --layers"
    raise ConfigError(
        f"a {cfg.hidden_text()} {cfg.cell} with --embed {cfg.embed} and {cfg.vocab_size:,} tokens has "
        f"{parameters:,} parameters, needing ~{(weights + activations) / 2**30:,.0f} GiB to train{split}; "
        f"this machine has {have / 2**30:,.0f} GiB: lower {flags}"
    )


def _budget(cfg: TrainConfig, stream_length: int, lengths: WindowLengths, log: Log) -> tuple[float, float]:
    """Step and time limits from --steps, --epochs and --time; 10 epochs when none is given.

    With --bptt-jitter an epoch's steps are the expected number of drawn windows.
    """
    per_epoch = lengths.per_epoch(stream_length)
    max_steps = cfg.steps or math.inf
    if cfg.epochs:
        max_steps = min(max_steps, math.ceil(cfg.epochs * per_epoch))
    max_seconds = cfg.time_seconds() or math.inf
    if max_steps == math.inf and max_seconds == math.inf:
        max_steps = 10 * per_epoch
        log("no budget given (--steps, --epochs or --time): training for 10 epochs")
    return max_steps, max_seconds


def _describe(run: _Run, train_tokens: TokenFile, resumed_at: int | None) -> None:
    """The two lines a run starts with: its data, then its model and layout."""
    cfg, model, valid = run.cfg, run.model, run.valid_tokens
    run.log(
        f"corpus {run.corpus.name}: {len(train_tokens):,} training tokens"
        + (f", {len(valid):,} validation tokens" if valid is not None else ", no validation split")
        + f" | {run.tokenizer.kind} tokenizer, {run.tokenizer.vocab_size:,} tokens"
    )
    run.log(
        f"model {model.config.hidden_text()} {model.config.cell}, "
        f"{model.num_parameters():,} parameters | device {run.device}"
        + (f", {cores.choose(cfg.threads).describe()}" if run.device.type == "cpu" else "") + " | "
        f"B={cfg.batch} T={cfg.bptt}" + (f"±{cfg.bptt_jitter:g}, ~" if cfg.bptt_jitter else ", ")
        + f"{run.lengths.per_epoch(run.batcher.length):,} windows per epoch"
        + (" | NT-ASGD" if cfg.optimizer == "ntasgd" else f" | average {cfg.average}" if cfg.average != "none" else "")
        + (f" | {run.world.size} ranks x {cfg.batch // run.world.size} streams" if run.world.distributed else "")
        + (f" | resuming at step {resumed_at}" if resumed_at is not None else "")
    )
