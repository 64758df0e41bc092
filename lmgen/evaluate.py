"""Cross-entropy, perplexity and bits per character over a whole split or text file.

The convention (DESIGN.md): every target token of the split is scored, ``[END]``
included, with the state carried through the whole split from the zero state. The
first token is predicted after an initial ``[END]`` (where every document starts, as in
generation), so N tokens give N targets and nothing is lost.

Two modes, one code path (:func:`evaluate_tokens`):

- **exact** (``batch=1``): one stream; every token is predicted from a state that has
  seen all previous tokens of the split.
- **batched** (``batch=B``, at most N/64 streams): the targets are cut into B contiguous streams of
  ceil(N/B) tokens, run side by side. Every token is still scored exactly once (the
  last stream is padded and masked, nothing is dropped), but streams 2..B start from
  the zero state in the middle of the text, so their first few tokens are predicted
  without their left context. The figure is therefore slightly pessimistic (an upper
  bound in practice), and approaches the exact one as N/B grows.

(:func:`stream_loss`, used for quick validation during training, is cruder: it uses the
training batcher, which also drops the first token of every stream and the N mod B
tokens at the end.)

The continuous cache and dynamic evaluation (:mod:`lmgen.adaptive`) score the same layout;
their API is importable from here too (``from lmgen.evaluate import CacheConfig, ...``), and
so is :mod:`lmgen.report`'s, what ``lmgen eval`` does with a checkpoint
(``evaluate_checkpoint``, ``EvalReport``).

>>> result = evaluate_tokens(model, token_file.tokens, batch=1)  # doctest: +SKIP
>>> result.perplexity, result.bits_per_char  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import StreamBatcher
from .model import RNNLM

LN2 = math.log(2.0)
MIN_STREAM = 64  # batched mode: never fewer targets than this per stream


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU autocast is slower for RNNs)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def stream_loss(
    model: RNNLM,
    tokens: np.ndarray,
    *,
    batch: int = 16,
    bptt: int = 256,
    max_tokens: int = 0,
    amp: bool = True,
    share: tuple[int, int] = (0, 1),
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and number of target tokens.

    The split is cut into ``batch`` contiguous streams (as in training), each started
    from the zero state and carried to its end. ``max_tokens`` > 0 evaluates a prefix
    only (a quick estimate during training). ``share=(r, W)`` scores only the r-th of W
    blocks of streams (each DDP rank its own; the callers add the sums).
    """
    if max_tokens:
        tokens = tokens[: max_tokens + batch]
    batch = max(1, min(batch, len(tokens) // 2))
    rank, size = share
    lo, hi = rank * batch // size, (rank + 1) * batch // size  # uneven shares are fine: only sums are kept
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        if hi > lo:
            for x, y in StreamBatcher(tokens, batch, bptt):
                x, y = x[lo:hi].to(device), y[lo:hi].to(device)  # [B/W, t]
                with autocast_for(device, amp):
                    logits, state = model(x, state)
                total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
                count += y.numel()
    finally:
        model.train(was_training)
    return total, count


def perplexity(nll: float, count: int) -> float:
    """exp(nll / count), capped so that a diverged model gives a huge number, not an overflow."""
    return math.exp(min(nll / max(count, 1), 700.0))


# --------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    """What :func:`evaluate_tokens` measured. ``nll`` is in nats, summed over ``tokens`` targets."""

    tokens: int  # target tokens scored (= tokens of the text, [END] included)
    nll: float  # summed negative log-likelihood, nats
    end_tokens: int = 0  # how many targets are [END] (counted in every figure)
    unknown: int = 0  # how many targets are <unk> (symbols the tokenizer lacks; counted too)
    chars: int = 0  # characters of the raw text (0: unknown, no bits/char)
    num_bytes: int = 0  # UTF-8 bytes of the raw text (0: unknown, no bits/byte)
    batch: int = 1  # streams: 1 = exact mode
    bptt: int = 256
    seconds: float = 0.0
    label: str = ""  # what was evaluated, e.g. "LSTM 2x200" or "5-gram KN"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.batch == 1

    @property
    def loss(self) -> float:
        """Cross-entropy, nats per token."""
        return self.nll / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll, self.tokens)

    @property
    def bits_per_token(self) -> float:
        return self.loss / LN2

    @property
    def bits_per_char(self) -> float | None:
        """Total bits over characters of the raw text: comparable across char/word/spm models."""
        return self.nll / LN2 / self.chars if self.chars else None

    @property
    def bits_per_byte(self) -> float | None:
        """Total bits over UTF-8 bytes (what enwik8 papers call "bpc")."""
        return self.nll / LN2 / self.num_bytes if self.num_bytes else None

    def to_dict(self) -> dict[str, Any]:
        """Every field and figure, for ``--json``."""
        row = asdict(self)
        row.update(exact=self.exact, loss=self.loss, perplexity=self.perplexity,
                   bits_per_token=self.bits_per_token, bits_per_char=self.bits_per_char,
                   bits_per_byte=self.bits_per_byte)
        return row

    def summary(self) -> str:
        """One line of figures, e.g. ``CE 4.7421 nats/token | ppl 114.72 | 6.841 bits/token | ...``."""
        parts = [f"CE {self.loss:.4f} nats/token", f"perplexity {self.perplexity:.2f}",
                 f"{self.bits_per_token:.4f} bits/token"]
        if self.bits_per_char is not None:
            parts.append(f"{self.bits_per_char:.4f} bits/char")
        if self.bits_per_byte is not None and self.num_bytes != self.chars:
            parts.append(f"{self.bits_per_byte:.4f} bits/byte")
        return " | ".join(parts)

    def describe(self) -> str:
        """The counts and the mode in words: what the figures are over."""
        mode = ("exact: one stream, every token predicted from all previous ones" if self.exact else
                f"batched: {self.batch} streams, each from the zero state (use --exact for the exact figure)")
        text = (f"{self.tokens:,} target tokens, {self.end_tokens:,} of them [END] (counted), "
                f"{self.unknown:,} <unk>")
        if self.chars:
            text += f"; {self.chars:,} characters"
            if self.num_bytes and self.num_bytes != self.chars:
                text += f", {self.num_bytes:,} bytes"
        return f"{text}; state carried through the text, first token predicted after [END]; {mode}"


# --------------------------------------------------------------------------- scoring


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def target_log_probs(model: Any, x: torch.Tensor, y: torch.Tensor, state: Any, amp: bool = False):
    """log p(y[b, t] | x[b, :t+1], state) as float64 [B, T], and the state after ``x``.

    A model with its own ``target_log_probs`` (the n-gram LM, which need not build [B, T, V])
    uses it; any other is called as ``model(x, state) -> (logits, state)``.
    """
    if hasattr(model, "target_log_probs"):
        logp, state = model.target_log_probs(x, y, state)
        return logp.double(), state
    with autocast_for(x.device, amp):
        logits, state = model(x, state)  # [B, T, V]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), state  # [B, T]


@torch.no_grad()
def evaluate_tokens(
    model: Any,
    tokens: np.ndarray,
    *,
    batch: int = 16,
    bptt: int = 256,
    end_id: int = 0,
    unk_id: int = 1,
    chars: int = 0,
    num_bytes: int = 0,
    amp: bool = False,
    label: str = "",
) -> EvalResult:
    """Score every token of ``tokens`` ([N] ids) with ``batch`` streams (1 = exact mode).

    The inputs are ``[END] + tokens[:-1]`` and the targets ``tokens``: N targets. With B
    streams of L = ceil(N/B) targets each::

        s = [END] t0 t1 ... t(N-1) pad...      stream b: inputs  s[bL .. bL+L-1]
                                                          targets s[bL+1 .. bL+L] (pads masked)

    and windows of ``bptt`` steps carry each stream's state to its end.

    >>> r = evaluate_tokens(model, np.array([5, 3, 0]), batch=1)  # doctest: +SKIP
    >>> r.tokens, r.end_tokens  # doctest: +SKIP
    (3, 1)
    """
    if bptt < 1 or batch < 1:
        raise ValueError(f"batch and bptt must be >= 1, got batch={batch} bptt={bptt}")
    tokens = np.asarray(tokens)
    N = int(tokens.shape[0])
    if N == 0:
        return EvalResult(0, 0.0, chars=chars, num_bytes=num_bytes, batch=1, bptt=bptt, label=label)
    inputs, targets, valid = stream_layout(tokens, batch, end_id)
    device = _device_of(model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    start = time.perf_counter()
    nll, state = 0.0, None
    try:
        for _, x, y, mask in stream_windows(inputs, targets, valid, bptt, device):
            logp, state = target_log_probs(model, x, y, state, amp)
            nll -= float(logp[mask].sum())
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return EvalResult(
        tokens=N, nll=nll, end_tokens=int(np.count_nonzero(tokens == end_id)),
        unknown=int(np.count_nonzero(tokens == unk_id)), chars=chars, num_bytes=num_bytes, batch=inputs.shape[0],
        bptt=bptt,
        seconds=time.perf_counter() - start, label=label,
    )


def stream_layout(tokens: np.ndarray, batch: int, end_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The N targets of ``tokens`` cut into B <= ``batch`` streams of L = ceil(N/B):
    inputs, targets [B, L] int64 and valid [B, L] bool (the last stream's padding is False).

    Stream b scores targets bL .. bL+L-1 of the text, so row-major order is text order.
    """
    N = int(tokens.shape[0])
    B = min(batch, max(1, N // MIN_STREAM))  # very short streams would be mostly context-free
    L = -(-N // B)  # targets per stream
    padded = np.full(B * L + 1, end_id, dtype=np.int64)
    padded[1 : N + 1] = tokens
    return padded[: B * L].reshape(B, L), padded[1:].reshape(B, L), (np.arange(B * L) < N).reshape(B, L)


def stream_windows(inputs: np.ndarray, targets: np.ndarray, valid: np.ndarray, length: int, device: Any):
    """Windows of ``length`` steps of :func:`stream_layout`'s streams, in order:
    (first step, x [B, T], y [B, T], mask [B, T]) on ``device``."""
    for t0 in range(0, inputs.shape[1], length):
        cut = slice(t0, t0 + length)
        yield (t0, torch.from_numpy(inputs[:, cut]).to(device), torch.from_numpy(targets[:, cut]).to(device),
               torch.from_numpy(valid[:, cut]).to(device))


def evaluate_split(
    model: Any,
    tokenizer: Any,
    corpus: Any,
    split: str,
    *,
    batch: int = 16,
    bptt: int = 256,
    amp: bool = False,
    label: str = "",
    max_tokens: int = 0,
) -> EvalResult:
    """Encode ``split`` of ``corpus`` with ``tokenizer`` (cached) and score it.

    bits/char and bits/byte divide by the characters / UTF-8 bytes of the split's raw text
    (``corpus.num_chars(split)``: documents joined by "\\n" where the corpus has a separator).
    ``max_tokens`` > 0 scores only a prefix (quick runs); then no per-character figures.

    >>> evaluate_split(model, tok, corpora.resolve("ptb"), "test", batch=1).perplexity  # doctest: +SKIP
    """
    from .data import encode_split

    token_file = encode_split(corpus, tokenizer, split)
    tokens = token_file.tokens
    chars = nbytes = 0
    if max_tokens and max_tokens < len(tokens):
        tokens = tokens[:max_tokens]
    else:
        chars = corpus.num_chars(split)
        nbytes = corpus.num_bytes(split)
    result = evaluate_tokens(model, tokens, batch=batch, bptt=bptt, end_id=tokenizer.end_id,
                             unk_id=tokenizer.unk_id, chars=chars, num_bytes=nbytes, amp=amp, label=label)
    result.extra.update(corpus=corpus.name, split=split)
    return result


def model_label(model: Any) -> str:
    """Short name of a model for result lines, e.g. "LSTM 2x200", "window-5 FFNN", "5-gram KN"."""
    if hasattr(model, "label"):
        return model.label
    cfg = getattr(model, "config", None)
    if cfg is None:
        return type(model).__name__
    if cfg.cell == "window":
        return f"{cfg.window}-token window FFNN {cfg.hidden_text()}"
    return f"{cfg.cell.upper()} {cfg.hidden_text()}"


# The checkpoint-level report (lmgen/report.py) and the adaptive methods' Python API,
# importable from here; both import this module, hence the lazy look-up.
_REPORT = ("EvalReport", "MAX_NGRAM", "checkpoint_corpus", "evaluate_checkpoint", "file_corpus", "parse_baseline")
_ADAPTIVE = ("AdaptiveRequest", "CacheConfig", "DynamicConfig", "evaluate_adaptive", "gradient_statistics",
             "tune_adaptive")


def __getattr__(name: str) -> Any:
    if name in _REPORT:
        from . import report

        return getattr(report, name)
    if name in _ADAPTIVE:
        from . import adaptive

        return getattr(adaptive, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
