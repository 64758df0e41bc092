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
elementwise (c_t = f_t * c_{t-1} + i_t * g_t), no matrix product inside. The gate maths
is :mod:`lmgen.cells`' (:func:`~lmgen.cells.sequence_activations`), as the step engines'.

    >>> tr = trace(model, tokenizer, "see http://x.org now")     # doctest: +SKIP
    >>> tr.unit(0, "c", 37).shape                                # [T] one value per token
    (20,)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from . import cells
from .cells import KINDS
from .errors import ConfigError
from .model import RNNLM
from .tokenizer import Tokenizer


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
        """Units of the first layer (of every layer, unless the model's --hidden lists sizes)."""
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
            raise ConfigError(f"no activation kind {kind!r} in a {self.cell} trace; "
                              f"choose one of {', '.join(self.kinds)}")
        size = self.layers[layer]["h"].shape[1]
        if not 0 <= index < size:
            raise ConfigError(f"unit {index} is out of range: layer {layer} has units 0..{size - 1}")
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
        from .tokenizer.word import _WORD_RE

        spans = np.array([m.span() for m in _WORD_RE.finditer(text)], dtype=np.int64).reshape(-1, 2)
        assert len(spans) == T, (len(spans), T)
        return spans
    return _spans_by_decoding(tokenizer, text, np.asarray(ids))


def _spans_by_decoding(tokenizer: Tokenizer, text: str, ids: np.ndarray) -> np.ndarray:
    newline = getattr(tokenizer, "newline_id", None)
    spans = np.zeros((len(ids), 2), dtype=np.int64)
    offset, t = 0, 0
    positions_all = np.arange(len(ids))
    lines = np.split(positions_all, np.flatnonzero(ids == newline)) if newline is not None else [positions_all]
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
        layers = []
        for layer in range(rnn.num_layers):
            h = cells.run_layer(rnn, layer, x)  # [T', H], from the zero state
            acts = cells.sequence_activations(cell, x, h, cells.layer_weights(rnn, layer))
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
