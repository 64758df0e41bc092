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

How (fast and exact): each layer is run with PyTorch's fused kernel, which returns
h_t for every t. The gates depend only on (x_t, h_{t-1}), so they are recomputed for all
t at once with two matrix products; only the LSTM cell state needs a loop, and it is
elementwise (c_t = f_t * c_{t-1} + i_t * g_t), no matrix product inside. The gate maths
is :mod:`lmgen.cells`' (:func:`~lmgen.cells.sequence_activations`), as the step engines'.

Bounded memory: the text goes through in chunks of ``chunk`` tokens, every layer's state
carried from one chunk to the next (the same steps as one pass), so the temporaries are
[chunk, 4H] whatever the length and only the kept activations grow with T, at 4 bytes a
value, or 2 with ``dtype="float16"``::

    tokens  |-- chunk 0 --|-- chunk 1 --|-- chunk 2 --| ...
    state     0 ---------> s0 ---------> s1 --------->      (each layer's (h, c))

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
from .intervene import active as active_edits
from .intervene import intervene  # noqa: F401  (re-exported: lmgen.activations.intervene)
from .model import RNNLM
from .tokenizer import Tokenizer

# Tokens run at once by trace: the fused kernel and the [C, 4H] gate products never see
# more, so a long text costs only what it keeps (oneDNN's LSTM failed at ~520k steps).
CHUNK = 4096
# How trace may store activations: float16 halves the memory (3 significant digits).
STORAGE_DTYPES = ("float32", "float16")


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
    chunk: int = CHUNK,
    dtype: str = "float32",
) -> Trace:
    """Run ``text`` through ``model`` and keep every layer's activations at every token.

    ``kinds`` keeps only some of them (e.g. ``("h", "c")``) to save memory on long texts
    (T x H x 4 bytes each; ``dtype="float16"`` halves that). ``chunk``: tokens run at
    once (any length of text works; the result does not depend on it beyond rounding).
    ``start_with_end`` feeds ``[END]`` first, as every training document starts. Symbols
    outside the vocabulary raise a ConfigError naming them, unless ``allow_unknown`` (they
    are then read as ``<unk>``).

    >>> tr = trace(model, tokenizer, "hello")           # doctest: +SKIP
    >>> tr.layers[0]["c"].shape, tr.top_ids.shape       # [T, H], [T, k]
    ((5, 512), (5, 5))
    """
    if not text:
        raise ConfigError("the text is empty: give at least one character to trace")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 token, got {chunk}")
    store = _storage_dtype(dtype)
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
        skip = 1 if start_with_end else 0  # the [END] step is context, not a token of the text
        inputs = np.concatenate([[tokenizer.end_id], ids]) if start_with_end else ids
        rnn, T = model.rnn, len(ids)
        # Filled chunk by chunk: no list of pieces to concatenate (that would hold two copies).
        layers = [{k: np.empty((T, H), dtype=store) for k in KINDS[cell] if k in keep}
                  for H in cells.layer_sizes(rnn)]
        singles = [cells.single_layer(rnn, layer) for layer in range(rnn.num_layers)]
        weights = [cells.layer_weights(rnn, layer) for layer in range(rnn.num_layers)]
        states: list = [None] * rnn.num_layers  # each layer's state after the last chunk
        edits = active_edits(model)  # units set by lmgen.intervene.intervene, or None
        # Every output preallocated: small arrays kept chunk after chunk would sit between
        # the freed temporaries and fragment the heap (60 MB at 200k tokens of a 2 x 512 LSTM).
        guesses = min(top_k, model.config.vocab_size)
        top_ids, top_probs = np.empty((T, guesses), dtype=np.int64), np.empty((T, guesses), dtype=np.float32)
        next_prob = np.full(T, np.nan, dtype=np.float32)
        for a in range(0, len(inputs), chunk):
            b = min(a + chunk, len(inputs))
            lo = max(a, skip) - a  # steps of this chunk before the text's first token
            r0, r1 = a + lo - skip, b - skip  # rows [r0, r1) of the trace this chunk fills
            x = model.embedding(torch.as_tensor(inputs[a:b], dtype=torch.long, device=device)[None])[0]  # [C, E]
            for layer in range(rnn.num_layers):
                if edits is not None and edits[layer] is not None:  # lmgen.intervene: a step at a time
                    out, state, acts = cells.edited_activations(cell, x, states[layer], weights[layer], edits[layer])
                else:
                    out, state = singles[layer](x[None], states[layer])  # [1, C, H]
                    start = None if states[layer] is None else _first_row(cell, states[layer])
                    acts = cells.sequence_activations(cell, x, out[0], weights[layer], start)
                for kind, values in layers[layer].items():
                    values[r0:r1] = acts[kind][lo:].float().cpu().numpy()
                states[layer], x = state, out[0]  # eval mode: no dropout between layers
            if r1 > r0:
                probs = torch.softmax(model.decoder(x[lo:]).float(), dim=-1)  # [C', V]
                chunk_probs, chunk_ids = probs.topk(guesses, dim=-1)
                top_ids[r0:r1], top_probs[r0:r1] = chunk_ids.cpu().numpy(), chunk_probs.cpu().numpy()
                rows = np.arange(r0, min(r1, T - 1))  # rows whose next token is in the text
                following = torch.as_tensor(ids[rows + 1], dtype=torch.long, device=device)
                next_prob[rows] = probs[: len(rows)].gather(1, following[:, None])[:, 0].cpu().numpy()
    finally:
        model.train(was_training)
    return Trace(
        text=text, cell=cell, ids=ids, spans=token_spans(tokenizer, text, ids), layers=layers,
        top_ids=top_ids, top_probs=top_probs,
        next_prob=next_prob, vocab=[tokenizer.piece(i) for i in range(tokenizer.vocab_size)],
    )  # fmt: skip


def _storage_dtype(dtype) -> np.dtype:
    """``"float32"`` / ``"float16"`` (or the numpy / torch dtype) -> the numpy dtype, else a ConfigError."""
    try:
        name = np.dtype(str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else dtype).name
    except TypeError:
        name = None
    if name not in STORAGE_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    return np.dtype(name)


def _first_row(cell: str, state):
    """A one-layer, one-row fused state ([1, 1, H], LSTM (h, c)) -> [H] (LSTM (h, c))."""
    return (state[0][0, 0], state[1][0, 0]) if cell == "lstm" else state[0, 0]
