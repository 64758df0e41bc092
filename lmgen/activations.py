"""What a model computes on a text: hidden state, cell state and gates at every step.

``trace(model, tokenizer, text)`` runs ``[END] + text`` through the model once and keeps,
for every layer l and every token t of the text, the state after reading token t::

    kind   cells          range     meaning
    h      lstm gru rnn   (-1, 1)   hidden state (the layer's output)
    c      lstm           any       cell state (memory)
    i f o  lstm           (0, 1)    input, forget, output gates
    g      lstm           (-1, 1)   candidate (what the input gate lets in)
    r z    gru            (0, 1)    reset and update gates
    n      gru            (-1, 1)   new (candidate) state

plus the next-token distribution after token t (its top-k and the probability of the
token that really comes next). Row t belongs to the character span ``spans[t]`` of the
text, so word and SentencePiece models line up with character predicates too.

How (fast and exact): each layer is run once with PyTorch's fused kernel, which returns
h_t for every t. The gates depend only on (x_t, h_{t-1}), so they are recomputed for all
t at once with two matrix products; only the LSTM cell state needs a loop, and it is
elementwise (c_t = f_t * c_{t-1} + i_t * g_t), no matrix product inside.

    >>> tr = trace(model, tokenizer, "see http://x.org now")     # doctest: +SKIP
    >>> tr.unit(0, "c", 37).shape                                # [T] one value per token
    (20,)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError
from .model import RNNLM
from .tokenizer import Tokenizer

KINDS = {"lstm": ("h", "c", "i", "f", "g", "o"), "gru": ("h", "r", "z", "n"), "rnn": ("h",)}
# Gates squashed by a sigmoid: their natural centre is 0.5, not 0 (colour scales, saturation).
SIGMOID_KINDS = frozenset("ifozr")


@dataclass(frozen=True)
class Unit:
    """One scalar the model computes at each step: ``layer`` (0-based), ``kind``, ``index``."""

    layer: int
    kind: str
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}[{self.index}]"


@dataclass
class Trace:
    """Activations of one model over one text; every array has one row per token.

    Fields: ``text``; ``cell`` (lstm/gru/rnn); ``ids`` [T] token ids; ``spans`` [T, 2]
    character start/end of each token in ``text``; ``layers[l][kind]`` [T, H] float32;
    ``top_ids`` / ``top_probs`` [T, k] the k most likely next tokens after token t;
    ``next_prob`` [T] probability given to the token that really follows (NaN for the
    last one); ``pieces`` the tokenizer's ``piece`` of every id (for display).
    """

    text: str
    cell: str
    ids: np.ndarray
    spans: np.ndarray
    layers: list[dict[str, np.ndarray]]
    top_ids: np.ndarray
    top_probs: np.ndarray
    next_prob: np.ndarray
    vocab: list[str] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden(self) -> int:
        return self.layers[0]["h"].shape[1]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.layers[0])

    def piece(self, id: int) -> str:
        return self.vocab[id]

    def check_unit(self, layer: int, kind: str, index: int) -> Unit:
        """The unit, or a ConfigError that says what exists."""
        if not 0 <= layer < self.num_layers:
            raise ConfigError(f"layer {layer} is out of range: this model has layers 0..{self.num_layers - 1}")
        if kind not in self.layers[layer]:
            raise ConfigError(f"no activation kind {kind!r} in a {self.cell} trace; choose one of {', '.join(self.kinds)}")
        if not 0 <= index < self.hidden:
            raise ConfigError(f"unit {index} is out of range: layers have units 0..{self.hidden - 1}")
        return Unit(layer, kind, index)

    def unit(self, layer: int, kind: str = "h", index: int = 0) -> np.ndarray:
        """Values [T] of one unit, one per token."""
        self.check_unit(layer, kind, index)
        return self.layers[layer][kind][:, index]

    def matrix(self, kinds: Iterable[str] | None = None) -> tuple[np.ndarray, list[Unit]]:
        """All units of the given kinds (default: all) as columns: ([T, N] array, [N] units)."""
        kinds = tuple(kinds) if kinds is not None else self.kinds
        blocks, units = [], []
        for layer, acts in enumerate(self.layers):
            for kind in kinds:
                if kind not in acts:
                    raise ConfigError(f"no activation kind {kind!r} in a {self.cell} trace; choose from {self.kinds}")
                blocks.append(acts[kind])
                units += [Unit(layer, kind, j) for j in range(acts[kind].shape[1])]
        return np.concatenate(blocks, axis=1), units

    def token_mask(self, char_mask: np.ndarray) -> np.ndarray:
        """A per-character boolean mask [len(text)] -> per-token [T]: a token is inside when
        most of its characters are (a character-level model: the character itself)."""
        char_mask = np.asarray(char_mask, dtype=bool)
        if char_mask.shape != (len(self.text),):
            raise ConfigError(f"the mask has shape {char_mask.shape}, the text has {len(self.text)} characters")
        counts = np.concatenate([[0], np.cumsum(char_mask)])
        inside = counts[self.spans[:, 1]] - counts[self.spans[:, 0]]
        width = np.maximum(self.spans[:, 1] - self.spans[:, 0], 1)
        return inside * 2 > width

    def char_values(self, values: np.ndarray) -> np.ndarray:
        """Per-token values [T] -> per-character [len(text)]; characters outside every
        token (spaces between words) get NaN."""
        out = np.full(len(self.text), np.nan, dtype=np.float64)
        for (start, end), v in zip(self.spans.tolist(), np.asarray(values).tolist()):
            out[start:end] = v
        return out


def regex_mask(text: str, pattern: str | re.Pattern, *, group: int | str = 0) -> np.ndarray:
    """Boolean mask [len(text)]: True on the characters of every match of ``pattern``.

    >>> regex_mask("a [[b]] c", r"\\[\\[.*?\\]\\]").astype(int).tolist()
    [0, 0, 1, 1, 1, 1, 1, 0, 0]
    """
    try:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    except re.error as e:
        raise ConfigError(f"invalid regular expression {pattern!r}: {e}") from None
    mask = np.zeros(len(text), dtype=bool)
    for m in compiled.finditer(text):
        mask[m.start(group) : m.end(group)] = True
    if not mask.any():
        raise ConfigError(f"the regular expression {compiled.pattern!r} matches nothing in the text "
                          f"({len(text)} characters); nothing to find units for")
    return mask


def token_spans(tokenizer: Tokenizer, text: str, ids: np.ndarray) -> np.ndarray:
    """Character span [T, 2] of every token of ``text`` (``ids = tokenizer.encode(text)``).

    char: one code point each; word: the regex matches the tokenizer splits on; other
    kinds (SentencePiece): decoded prefixes of each line, so byte-fallback pieces and
    merged spaces land on the characters they spell.
    """
    T = len(ids)
    if tokenizer.kind == "char":
        starts = np.arange(T)
        return np.stack([starts, starts + 1], axis=1)
    if tokenizer.kind == "word":
        from .tokenizer import _WORD_RE

        spans = np.array([m.span() for m in _WORD_RE.finditer(text)], dtype=np.int64).reshape(-1, 2)
        assert len(spans) == T, (len(spans), T)
        return spans
    return _spans_by_decoding(tokenizer, text, np.asarray(ids))


def _spans_by_decoding(tokenizer: Tokenizer, text: str, ids: np.ndarray) -> np.ndarray:
    newline = getattr(tokenizer, "newline_id", None)
    spans = np.zeros((len(ids), 2), dtype=np.int64)
    offset, t = 0, 0
    lines = np.split(np.arange(len(ids)), np.flatnonzero(ids == newline)) if newline is not None else [np.arange(len(ids))]
    for n, positions in enumerate(lines):
        if n:  # the newline token itself covers the "\n"
            nl = positions[0]
            spans[nl] = (offset, offset + 1)
            offset += 1
            positions = positions[1:]
        prev = 0
        for k, pos in enumerate(positions):
            end = max(prev, len(tokenizer.decode(ids[positions[: k + 1]])))
            spans[pos] = (offset + prev, offset + end)
            prev = end
        offset += prev
        t += len(positions)
    if offset != len(text):  # decoding did not reproduce the text (should not happen): stay in range
        spans = np.minimum(spans, len(text))
    return spans


def _layer_weights(rnn: torch.nn.Module, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
    H = w_hh.shape[1]
    zeros = torch.zeros(w_ih.shape[0], device=w_ih.device, dtype=w_ih.dtype)
    b_ih = getattr(rnn, f"bias_ih_l{layer}", zeros) if rnn.bias else zeros
    b_hh = getattr(rnn, f"bias_hh_l{layer}", zeros) if rnn.bias else zeros
    assert w_hh.shape[0] % H == 0
    return w_ih, w_hh, b_ih, b_hh


def _single_layer(rnn: torch.nn.Module, layer: int) -> torch.nn.Module:
    """A one-layer copy of layer ``layer`` of a fused nn.LSTM/GRU/RNN (same kernel, same numbers)."""
    cls = type(rnn)
    w_ih = getattr(rnn, f"weight_ih_l{layer}")
    kwargs = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, torch.nn.RNN) else {}
    single = cls(w_ih.shape[1], rnn.hidden_size, num_layers=1, bias=rnn.bias, batch_first=True, **kwargs)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
    single.load_state_dict({f"{n}_l0": getattr(rnn, f"{n}_l{layer}").detach() for n in names})
    return single.to(w_ih.device)


def _lstm_gates(x: Tensor, h: Tensor, h0: Tensor, c0: Tensor, weights) -> dict[str, Tensor]:
    """x [T, E], h [T, H] (outputs of the fused layer), h0 / c0 [H] -> gates, c."""
    w_ih, w_hh, b_ih, b_hh = weights
    h_prev = torch.cat([h0[None], h[:-1]])  # [T, H]: the state each step reads
    pre = x @ w_ih.T + b_ih + h_prev @ w_hh.T + b_hh  # [T, 4H], PyTorch order i, f, g, o
    i, f, g, o = pre.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = _linear_scan(f, i * g, c0)
    return {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}


def _linear_scan(a: Tensor, b: Tensor, x0: Tensor) -> Tensor:
    """x_t = a_t * x_{t-1} + b_t for t = 0..T-1 from x_{-1} = x0; a, b [T, H] -> x [T, H].

    The LSTM cell state is such a linear recurrence. A plain loop costs T Python steps;
    here T is cut into blocks of K ~ sqrt(T) steps::

        1. inside every block at once, from a zero start:  local_t, and P_t = a_1 * ... * a_t
        2. block by block, the true start of each block:   start_b = local_end + P_end * start_{b-1}
        3. everywhere at once:                              x_t = local_t + P_t * start_b

    so about 2 sqrt(T) Python steps, each over [T / K, H]; the same sums in another order.
    """
    T, H = b.shape
    K = max(1, int(math.isqrt(T)))
    nb = -(-T // K)
    pad = nb * K - T
    if pad:  # a_t = 1, b_t = 0 past the end: the state just stays
        a = torch.cat([a, a.new_ones(pad, H)])
        b = torch.cat([b, b.new_zeros(pad, H)])
    A, B = a.reshape(nb, K, H), b.reshape(nb, K, H)
    local, prod = torch.empty_like(B), torch.empty_like(A)
    acc, run = B.new_zeros(nb, H), A.new_ones(nb, H)
    for k in range(K):  # step 1
        acc = torch.addcmul(B[:, k], A[:, k], acc)
        run = run * A[:, k]
        local[:, k], prod[:, k] = acc, run
    starts = torch.empty(nb, H, dtype=b.dtype, device=b.device)
    start = x0
    for blk in range(nb):  # step 2
        starts[blk] = start
        start = torch.addcmul(local[blk, -1], prod[blk, -1], start)
    x = torch.addcmul(local, prod, starts[:, None, :])  # step 3
    return x.reshape(nb * K, H)[:T]


def _gru_gates(x: Tensor, h: Tensor, h0: Tensor, weights) -> dict[str, Tensor]:
    w_ih, w_hh, b_ih, b_hh = weights
    h_prev = torch.cat([h0[None], h[:-1]])
    gi = x @ w_ih.T + b_ih  # [T, 3H], PyTorch order r, z, n
    gh = h_prev @ w_hh.T + b_hh
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)  # PyTorch applies r after the recurrent product (cuDNN style)
    return {"h": h, "r": r, "z": z, "n": n}


@torch.no_grad()
def trace(
    model: RNNLM,
    tokenizer: Tokenizer,
    text: str,
    *,
    top_k: int = 5,
    kinds: Iterable[str] | None = None,
    start_with_end: bool = True,
    allow_unknown: bool = False,
) -> Trace:
    """Run ``text`` through ``model`` and keep every layer's activations at every token.

    ``kinds`` keeps only some of them (e.g. ``("h", "c")``) to save memory on long texts
    (T x H x 4 bytes each). ``start_with_end`` feeds ``[END]`` first, as every training
    document starts. Symbols outside the vocabulary raise a ConfigError naming them,
    unless ``allow_unknown`` (they are then read as ``<unk>``).

    >>> tr = trace(model, tokenizer, "hello")           # doctest: +SKIP
    >>> tr.layers[0]["c"].shape, tr.top_ids.shape       # [T, H], [T, k]
    ((5, 512), (5, 5))
    """
    if not text:
        raise ConfigError("the text is empty: give at least one character to trace")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if not allow_unknown:
        unknown = tokenizer.unknown_symbols(text)
        if unknown:
            raise ConfigError(
                f"the text has symbols this model's vocabulary lacks: {', '.join(map(repr, unknown))}; "
                f"remove them, or pass allow_unknown=True to read them as <unk>"
            )
    cell = model.config.cell
    keep = tuple(KINDS[cell]) if kinds is None else tuple(kinds)
    bad = [k for k in keep if k not in KINDS[cell]]
    if bad:
        raise ConfigError(f"no activation kind {bad[0]!r} for a {cell} model; choose from {', '.join(KINDS[cell])}")
    if "h" not in keep:
        keep = ("h",) + keep
    ids = tokenizer.encode_array(text)
    if len(ids) == 0:
        raise ConfigError("the text encodes to no tokens (only spaces?); give some text to trace")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        inputs = np.concatenate([[tokenizer.end_id], ids]) if start_with_end else ids
        tokens = torch.as_tensor(inputs, dtype=torch.long, device=device)[None]  # [1, T']
        x = model.embedding(tokens)[0]  # [T', E]
        rnn = model.rnn
        H = rnn.hidden_size
        layers = []
        for layer in range(rnn.num_layers):
            h0 = torch.zeros(H, device=device)
            single = _single_layer(rnn, layer)
            if cell == "lstm":
                out, _ = single(x[None], (h0[None, None], h0[None, None].clone()))
            else:
                out, _ = single(x[None], h0[None, None])
            h = out[0]  # [T', H]
            weights = _layer_weights(rnn, layer)
            if cell == "lstm":
                acts = _lstm_gates(x, h, h0, h0, weights)
            elif cell == "gru":
                acts = _gru_gates(x, h, h0, weights)
            else:
                acts = {"h": h}
            skip = 1 if start_with_end else 0  # the [END] step is context, not a token of the text
            layers.append({k: acts[k][skip:].float().cpu().numpy() for k in KINDS[cell] if k in keep})
            x = h  # eval mode: no dropout between layers
        logits = model.decoder(h)[skip:].float()  # [T, V]
        probs = torch.softmax(logits, dim=-1)
        k = min(top_k, probs.shape[1])
        top_probs, top_ids = probs.topk(k, dim=-1)
        following = torch.as_tensor(ids[1:], dtype=torch.long, device=device)
        next_prob = torch.full((len(ids),), float("nan"))
        next_prob[:-1] = probs[:-1].gather(1, following[:, None])[:, 0].cpu()
    finally:
        model.train(was_training)
    return Trace(
        text=text, cell=cell, ids=ids, spans=token_spans(tokenizer, text, ids), layers=layers,
        top_ids=top_ids.cpu().numpy(), top_probs=top_probs.cpu().numpy(), next_prob=next_prob.numpy(),
        vocab=[tokenizer.piece(i) for i in range(tokenizer.vocab_size)],
    )  # fmt: skip
