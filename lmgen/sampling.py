"""Generation: prime the state with the prompt, then feed each chosen token back.

Strategies (names as in Hugging Face ``generate``, see :class:`GenerationConfig`): greedy,
ancestral sampling with ``temperature``, ``top_k``, ``top_p`` (nucleus), beam search
(``num_beams``, ``length_penalty``, ``num_return_sequences`` best), and an optional
``repetition_penalty``. Randomness comes only from an injected ``torch.Generator``.

The flow of one call::

    "[END]" + prompt ──prime──► Context(state, logits)        once, O(len(prompt))
                                   │
              ┌────────────────────┴─────────────────────┐
              ▼                                          ▼
    choose a token per row [B]                 beam: top 2W of W x V
    (greedy / temperature / top-k / top-p)     candidates, [END] ones finish
              │                                          │
    feed it back: one recurrent step with      reorder the W states, step
    the carried state, O(1) per token          ...until W finished beat the rest
              │
    a row that chose [END] (not printed) leaves the batch; the others go on

Sample ``i`` of a batch draws its random numbers from its own generator (seeded from
the injected one), so its text is the same whether it was generated alone or with
others, and whatever its batch-mates do.

>>> model, tok = lmgen.load("checkpoints/run")                       # doctest: +SKIP
>>> g = torch.Generator().manual_seed(0)                              # doctest: +SKIP
>>> for piece in stream(model, tok, "The ", GenerationConfig(top_p=0.9), generator=g):  # doctest: +SKIP
...     print(piece, end="", flush=True)
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import math
import re
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------
# configuration

# Field -> command-line flag, so validation names the flag the user typed.
FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "min_new_tokens": "--min-new-tokens",
    "do_sample": "--greedy",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "num_beams": "--beam",
    "length_penalty": "--length-penalty",
    "repetition_penalty": "--repetition-penalty",
    "num_return_sequences": "--num-samples",
    "precision": "--precision",
}
PRECISIONS = ("float32", "float16", "auto")


@dataclass
class GenerationConfig:
    """How to choose each next token (names as in Hugging Face ``generate``).

    The strategy follows from the fields: ``num_beams > 1`` is beam search,
    otherwise ``do_sample`` samples (with ``temperature``, ``top_k``, ``top_p``) and
    ``do_sample=False`` is greedy. Validation at construction names the CLI flag:

    >>> GenerationConfig(top_p=1.5)
    Traceback (most recent call last):
    lmgen.errors.ConfigError: --top-p must be in (0, 1], got 1.5
    >>> GenerationConfig(num_beams=4, num_return_sequences=2).strategy
    'beam'
    """

    max_new_tokens: int = 500  # stop after this many new tokens ([END] included)
    min_new_tokens: int = 0  # [END] cannot be chosen before this many new tokens
    do_sample: bool = True  # False: greedy (the most likely token)
    temperature: float = 1.0  # divide logits by this before softmax (> 0)
    top_k: int | None = None  # sample among the k most likely tokens (None: all)
    top_p: float = 1.0  # sample among the fewest most likely tokens whose mass reaches p
    num_beams: int = 1  # beam width W (1: no beam search)
    length_penalty: float = 1.0  # beam: rank by score / length ** length_penalty
    repetition_penalty: float = 1.0  # CTRL penalty on tokens already in the text (1: off)
    num_return_sequences: int = 1  # samples per call, or the n best beams
    # weights of the step-by-step recurrence: "float32" (the model's own numbers), "float16"
    # (CPU: packed half-precision weights, float32 arithmetic; 2-3x faster for one stream)
    # or "auto" (float16 where supported, else float32). See :class:`Recurrence`.
    precision: str = "float32"

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{FLAGS[name]} must be {rule}, got {getattr(self, name)!r}")

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def real(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        check(whole(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", "a whole number >= 1")
        check(whole(self.min_new_tokens) and 0 <= self.min_new_tokens, "min_new_tokens", "a whole number >= 0")
        check(real(self.temperature) and self.temperature > 0, "temperature",
              "> 0 (use --greedy for the most likely token)")
        check(self.top_k is None or (whole(self.top_k) and self.top_k >= 1), "top_k", "a whole number >= 1")
        check(real(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]")
        check(whole(self.num_beams) and self.num_beams >= 1, "num_beams", "a whole number >= 1")
        check(real(self.length_penalty), "length_penalty", "a finite number")
        check(real(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "> 0")
        check(whole(self.num_return_sequences) and self.num_return_sequences >= 1, "num_return_sequences",
              "a whole number >= 1")
        check(self.precision in PRECISIONS, "precision", "one of " + ", ".join(PRECISIONS))
        if self.num_beams > 1:
            sampling = [FLAGS[n] for n, on in (("temperature", self.temperature != 1.0),
                                                ("top_k", self.top_k is not None),
                                                ("top_p", self.top_p != 1.0)) if on]
            if sampling:
                raise ConfigError(f"beam search is deterministic: {', '.join(sampling)} cannot be used with --beam")
            if self.num_return_sequences > self.num_beams:
                raise ConfigError(f"--num-samples must be <= --beam (the n best of {self.num_beams} beams), "
                                  f"got {self.num_return_sequences}")

    @property
    def strategy(self) -> str:
        """``"beam"``, ``"sample"`` or ``"greedy"``."""
        return "beam" if self.num_beams > 1 else "sample" if self.do_sample else "greedy"

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for humans, e.g. ``sample temperature=0.8 top_p=0.95 max_new_tokens=500``."""
        parts = [self.strategy]
        if self.strategy == "sample":
            parts.append(f"temperature={self.temperature:g}")
            if self.top_k is not None:
                parts.append(f"top_k={self.top_k}")
            if self.top_p < 1:
                parts.append(f"top_p={self.top_p:g}")
        if self.strategy == "beam":
            parts += [f"num_beams={self.num_beams}", f"length_penalty={self.length_penalty:g}"]
        if self.repetition_penalty != 1:
            parts.append(f"repetition_penalty={self.repetition_penalty:g}")
        parts.append(f"max_new_tokens={self.max_new_tokens}")
        if self.min_new_tokens:
            parts.append(f"min_new_tokens={self.min_new_tokens}")
        parts.append(f"num_return_sequences={self.num_return_sequences}")
        if self.precision != "float32":
            parts.append(f"precision={self.precision}")
        return " ".join(parts)


def config_from_flags(
    *,
    greedy: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    beam: int | None = None,
    length_penalty: float | None = None,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 500,
    min_new_tokens: int = 0,
    num_samples: int = 1,
    default_temperature: float = 0.8,
    precision: str = "float32",
) -> GenerationConfig:
    """The config that ``lmgen sample`` / ``lmgen repl`` flags ask for (``None``: not given).

    Refuses flags that would be silently ignored, e.g. ``--greedy --temperature 0.5``.

    >>> config_from_flags(top_p=0.9).describe()
    'sample temperature=0.8 top_p=0.9 max_new_tokens=500 num_return_sequences=1'
    """
    sampling = [name for name, value in (("--temperature", temperature), ("--top-k", top_k),
                                         ("--top-p", top_p)) if value is not None]
    if greedy and beam is not None:
        raise ConfigError("--greedy and --beam exclude each other (--beam 1 is greedy)")
    if (greedy or beam is not None) and sampling:
        raise ConfigError(f"{', '.join(sampling)} only apply to sampling; drop them or drop "
                          f"{'--greedy' if greedy else '--beam'}")
    if length_penalty is not None and beam is None:
        raise ConfigError("--length-penalty only applies to beam search; add --beam WIDTH")
    if beam is not None:
        if not isinstance(beam, int) or beam < 1:
            raise ConfigError(f"--beam must be a whole number >= 1, got {beam!r}")
        return GenerationConfig(num_beams=beam, do_sample=False,
                                length_penalty=1.0 if length_penalty is None else length_penalty,
                                repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                                min_new_tokens=min_new_tokens, num_return_sequences=num_samples,
                                precision=precision)
    return GenerationConfig(
        do_sample=not greedy,
        temperature=default_temperature if temperature is None or greedy else temperature,
        top_k=top_k, top_p=1.0 if top_p is None else top_p, repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_return_sequences=num_samples,
        precision=precision,
    )


def check_temperature(temperature: float) -> None:
    """Raise a ConfigError naming ``--temperature`` unless it is > 0."""
    GenerationConfig(temperature=temperature)


# ---------------------------------------------------------------------------------------
# the recurrence, one step at a time


@functools.cache
def half_supported() -> bool:
    """Whether this torch build has fbgemm's float16 CPU kernels (x86 builds).

    ATen's ``fbgemm_*_fp16`` functions print a one-time deprecation warning; calling
    them once here, with warnings off, keeps it out of every user's output.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = _PackedLinear(torch.ones(2, 3), torch.zeros(2))
            return bool(torch.equal(probe(torch.ones(1, 3)), torch.full((1, 2), 3.0)))
    except (AttributeError, RuntimeError):
        return False


class _PackedLinear:
    """``x @ weight.T + bias`` with the weight stored as float16, arithmetic in float32.

    fbgemm's packed float16 matrix, called through ATen's ``fbgemm_linear_fp16_weight``:
    half the bytes of float32 for the same product, and at batch 1 a product is bound by
    reading its weight from memory. The result equals float32 arithmetic on the
    float16-rounded weight (to ~1e-6, tested).

    Two calls to the same fbgemm kernel, chosen per call. One row (one stream, the usual
    case): ATen's ``fbgemm_linear_fp16_weight``, faster than a float32 product at every
    size measured (100 x 64 to 10,000 x 650) and ~20 us a call cheaper than the op below
    (whose TorchScript-class argument is boxed at every call): a 2x512 char-LSTM step makes
    three calls in ~230 us. Several rows with several threads: the
    ``quantized::linear_dynamic_fp16`` op, which splits the product over the threads
    (ATen's runs on one): 1.6 vs 3.3 ms for 64 rows of 2048 x 1024 on 2 cores. Both
    give the same bits (tested).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None):
        weight = weight.detach().float().contiguous()
        self.bias = weight.new_zeros(weight.shape[0]) if bias is None else bias.detach().float()
        self.packed = torch.fbgemm_pack_gemm_matrix_fp16(weight)  # an opaque uint8 tensor
        self.threaded = torch.ops.quantized.linear_prepack_fp16(weight, self.bias)

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1 and torch.get_num_threads() > 1:
            return torch.ops.quantized.linear_dynamic_fp16.default(x, self.threaded)
        return torch.fbgemm_linear_fp16_weight(x, self.packed, self.bias)


# model -> (parameter versions, packed layers): packing 2x512 takes ~20 ms, too slow to
# redo at every REPL line; a weight changed in place (training) bumps its version.
_PACKED: "weakref.WeakKeyDictionary[Any, tuple[tuple, Any]]" = weakref.WeakKeyDictionary()


class Recurrence:
    """An :class:`~lmgen.model.RNNLM` unrolled one token per call, for generation.

    ``nn.LSTM`` called on a [B, 1] input spends most of its time outside the arithmetic
    (on CPU, oneDNN re-lays out the weights at every call: ~10 ms for 2x512). Here an LSTM
    layer is two ``addmm`` and five pointwise kernels (see :meth:`_lstm_step`); GRU and
    tanh-RNN layers call the fused ATen cells (``torch.gru_cell`` / ``rnn_tanh_cell``).
    Dropout is off (inference).

    ``precision="float16"`` (CPU only) steps with packed float16 copies of the weight
    matrices instead (:class:`_PackedLinear`; biases, embeddings, state and arithmetic stay
    float32): one stream of a 2x512 LSTM reads 6 MB a token instead of 12 MB, in two
    products (the first layer's input projection is a table, deeper layers multiply [x, h] by
    [W_ih | W_hh] at once). ATen's fused ``quantized_lstm`` over packed cells was tried and
    is slower here: it makes four fbgemm calls a step, one per matrix, where this makes
    two (~230 vs ~270 us). Priming a prompt (:meth:`run`) always uses the model itself.
    ``"auto"`` is float16 where the kernels exist and the model is on the CPU, else float32.

    The state is kept per layer: a list of L tensors [B, H] (LSTM: L pairs (h, c)), so
    stepping never stacks or slices [L, B, H] tensors. Models that are not an RNNLM
    (anything with ``logits, state = model(tokens[B, T], state)`` and the batch on
    dimension 1 of the state) go through ``model`` itself.

    >>> rec = Recurrence(model)                                      # doctest: +SKIP
    >>> logits, layers = rec.step(torch.tensor([5]), rec.split(model.init_state(1)))  # doctest: +SKIP
    """

    TABLE_LIMIT = 1 << 22  # floats (16 MB): above it, embed and multiply each step

    def __init__(self, model: Any, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        cell = getattr(getattr(model, "config", None), "cell", None)
        rnn = getattr(model, "rnn", None)
        self.fast = cell in ("lstm", "gru", "rnn") and isinstance(rnn, torch.nn.RNNBase)
        self.cell = cell
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        self.device = params[0].device if params else torch.device("cpu")
        possible = self.fast and self.device.type == "cpu" and half_supported()
        if precision == "float16" and not possible:
            raise ConfigError("--precision float16 needs an LSTM/GRU/RNN model on the CPU and a torch build with "
                              "fbgemm (x86); use --precision float32 or auto")
        self.half = possible and precision != "float32"
        self.precision = "float16" if self.half else "float32"
        if self.fast:
            self.num_layers = rnn.num_layers
            self.weights = [
                tuple(getattr(rnn, f"{kind}_l{layer}").detach() for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                for layer in range(rnn.num_layers)
            ]
            self.embedding = model.embedding.weight.detach()
            self.decoder = (model.decoder.weight.detach(), model.decoder.bias.detach())
            self._cell = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}[cell]
            if self.half:
                self._pack(params)
            elif cell == "lstm":
                # LSTM by hand: at B = 1 torch.lstm_cell takes ~2x the time of its two
                # matrix-vector products. Both biases are summed once, and when it is small
                # (V x 4H floats) the first layer's input projection of every token is a table:
                # one row lookup instead of an [E, 4H] product per step.
                with torch.no_grad():
                    self.bias = [b_ih + b_hh for _, _, b_ih, b_hh in self.weights]
                    V, G = self.embedding.shape[0], self.weights[0][0].shape[0]
                    self.table = (F.linear(self.embedding, self.weights[0][0], self.bias[0])
                                  if V * G <= self.TABLE_LIMIT else None)  # [V, 4H]

    def _pack(self, params: list[Tensor]) -> None:
        """Packed float16 layers (cached per model until a weight changes).

        Per layer ``(inp, rec, both)``. The first layer's input projection of every token,
        when small (V x G floats), is a float32 table of the float16-rounded product: a row
        lookup. An LSTM or tanh RNN sums its two projections, so a deeper layer multiplies
        [x, h] by [W_ih | W_hh] in one call (``both``, both biases inside); a GRU keeps
        them apart (b_hh sits inside r * (...)).
        """
        try:
            key: tuple | None = tuple((id(p), p._version) for p in params)
        except RuntimeError:  # inference tensors keep no version counter: never trust a cache
            key = None
        cached = _PACKED.get(self.model)
        if key is not None and cached is not None and cached[0] == key:
            self.layers, self.out = cached[1]
            return
        gru = self.cell == "gru"
        layers: list[tuple[Any, Any, Any]] = []
        with torch.no_grad():
            for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.weights):
                b_in = b_ih if gru else b_ih + b_hh
                if layer == 0:
                    if self.embedding.shape[0] * w_ih.shape[0] <= self.TABLE_LIMIT:
                        table = F.linear(self.embedding, w_ih.half().float(), b_in)  # [V, G]
                        inp: Any = functools.partial(F.embedding, weight=table)
                    else:
                        # bound by default arguments, not through self: the cache value must
                        # not reference the model it is keyed by, or the model is never freed
                        inp = lambda tokens, project=_PackedLinear(w_ih, b_in), emb=self.embedding: \
                            project(F.embedding(tokens, emb))  # noqa: E731
                    layers.append((inp, _PackedLinear(w_hh, b_hh if gru else None), None))
                elif gru:
                    layers.append((_PackedLinear(w_ih, b_in), _PackedLinear(w_hh, b_hh), None))
                else:
                    layers.append((None, None, _PackedLinear(torch.cat([w_ih, w_hh], 1), b_in)))
            self.layers, self.out = layers, _PackedLinear(*self.decoder)
        _PACKED[self.model] = (key, (self.layers, self.out))

    # -- state formats ---------------------------------------------------------------

    def split(self, state: Any) -> Any:
        """Model state ([L, B, H], or (h, c)) -> per-layer list."""
        if not self.fast:
            return state
        if self.cell == "lstm":
            h, c = state
            return [(h[layer], c[layer]) for layer in range(self.num_layers)]
        return [state[layer] for layer in range(self.num_layers)]

    def join(self, layers: Any) -> Any:
        """Per-layer list -> model state ([L, B, H], or (h, c))."""
        if not self.fast:
            return layers
        if self.cell == "lstm":
            return (torch.stack([h for h, _ in layers]), torch.stack([c for _, c in layers]))
        return torch.stack(layers)

    def select(self, layers: Any, index: Tensor) -> Any:
        """Rows ``index`` of every layer's state (beam reordering, finished samples leaving)."""
        if not self.fast:
            return _map_state(layers, lambda s: s.index_select(1, index))
        if self.cell == "lstm":
            return [(h.index_select(0, index), c.index_select(0, index)) for h, c in layers]
        return [h.index_select(0, index) for h in layers]

    def repeat(self, layers: Any, batch: int) -> Any:
        """One row's state copied ``batch`` times (several samples from one prompt)."""
        if not self.fast:
            return _map_state(layers, lambda s: s.repeat_interleave(batch, dim=1))
        if self.cell == "lstm":
            return [(h.repeat(batch, 1), c.repeat(batch, 1)) for h, c in layers]
        return [h.repeat(batch, 1) for h in layers]

    # -- stepping --------------------------------------------------------------------

    def step(self, tokens: Tensor, layers: Any) -> tuple[Tensor, Any]:
        """tokens [B] -> next-token logits [B, V] and the new per-layer state."""
        if not self.fast:
            with torch.no_grad():
                out, state = self.model(tokens[:, None], layers)  # [B, 1, V]
            return out[:, -1], state
        # the fast paths use detached weights only: no autograd to switch off
        if self.half:
            return self._half_step(tokens, layers)
        if self.cell == "lstm":
            return self._lstm_step(tokens, layers)
        x = F.embedding(tokens, self.embedding)  # [B, E]
        new = []
        for weights, s in zip(self.weights, layers):
            s = self._cell(x, s, *weights)  # LSTM: (h, c) each [B, H]; else h [B, H]
            new.append(s)
            x = s[0] if self.cell == "lstm" else s
        return F.linear(x, *self.decoder), new  # [B, V]

    def _lstm_step(self, tokens: Tensor, layers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Any]:
        H = layers[0][0].shape[1]
        new = []
        x = tokens
        for layer, ((w_ih, w_hh, _, _), (h, c)) in enumerate(zip(self.weights, layers)):
            if layer == 0 and self.table is not None:
                gates = torch.addmm(self.table[tokens], h, w_hh.t())  # [B, 4H]: i, f, g, o
            else:
                if layer == 0:
                    x = F.embedding(tokens, self.embedding)  # [B, E]
                gates = torch.addmm(torch.addmm(self.bias[layer], x, w_ih.t()), h, w_hh.t())
            i, f, _, o = gates.sigmoid().chunk(4, 1)  # [B, H] each
            c = torch.addcmul(f * c, i, gates[:, 2 * H : 3 * H].tanh())
            h = o * c.tanh()
            new.append((h, c))
            x = h
        return F.linear(x, *self.decoder), new  # [B, V]

    def _half_step(self, tokens: Tensor, layers: list[Any]) -> tuple[Tensor, Any]:
        """One step with the packed float16 weights (same gate order as ``nn.LSTM`` / ``nn.GRU``)."""
        x = tokens
        new = []
        for (inp, rec, both), s in zip(self.layers, layers):
            h = s[0] if self.cell == "lstm" else s
            if self.cell == "gru":
                gi, gh = inp(x), rec(h)  # [B, 3H] each: r, z, n
                H = h.shape[1]
                r, z = gi[:, : 2 * H].add_(gh[:, : 2 * H]).sigmoid_().chunk(2, 1)
                n = torch.addcmul(gi[:, 2 * H :], r, gh[:, 2 * H :]).tanh_()
                h = torch.addcmul(n, z, h - n)  # (1 - z) * n + z * h
                new.append(h)
            else:
                pre = inp(x).add_(rec(h)) if both is None else both(torch.cat([x, h], 1))
                if self.cell == "lstm":
                    H = h.shape[1]
                    g = pre[:, 2 * H : 3 * H].tanh()  # before the in-place sigmoid of all four
                    i, f, _, o = pre.sigmoid_().chunk(4, 1)  # [B, H] each
                    c = torch.addcmul(f * s[1], i, g)
                    h = o * c.tanh()
                    new.append((h, c))
                else:
                    h = pre.tanh_()
                    new.append(h)
            x = h
        return self.out(x), new  # [B, V]

    def run(self, tokens: Tensor, layers: Any) -> tuple[Tensor, Any]:
        """A whole sequence tokens [1, T] through the model -> logits [V] after the last
        one and the new per-layer state (priming: one fused call for the prompt)."""
        with _eval_mode(self.model), torch.no_grad():
            logits, state = self.model(tokens, None if layers is None else self.join(layers))
        return logits[0, -1], self.split(state)


def _map_state(state: Any, fn: Any) -> Any:
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train(True)


# ---------------------------------------------------------------------------------------
# the text so far


class Context:
    """A text (token ids, starting with ``[END]``) and the model state after it.

    Generation reads it and, for a single sample, moves it forward, so the next call
    continues the text with its state (what the REPL does on an empty line). Tokens
    appended but not yet fed (the last chosen one, a ``[END]``, new text) are fed on the
    next call: ``ids[fed:]``. ``unknown`` lists prompt symbols the vocabulary lacks (they
    became ``<unk>``).

    >>> ctx = prime(model, tok, "Once upon a")                       # doctest: +SKIP
    >>> "".join(stream(model, tok, ctx, GenerationConfig(max_new_tokens=20)))  # doctest: +SKIP
    """

    def __init__(self, ids: list[int], head: tuple[int, Any, Tensor | None], unknown: list[str] | None = None):
        self.ids = ids
        # (fed, per-layer state, logits [V] after ids[:fed]) replaced in one assignment, so a
        # Ctrl-C between two statements can never leave state and logits out of step
        self.head = head
        self.unknown = unknown or []
        self.stop: str | None = None  # how the last generation ended: "end", "length" or None

    @property
    def fed(self) -> int:
        return self.head[0]

    def extend(self, ids: Sequence[int]) -> None:
        """Append tokens to the text; they are fed to the model by the next generation."""
        self.ids.extend(int(i) for i in ids)

    def text(self, tokenizer: Tokenizer) -> str:
        """The whole text so far (the ``[END]`` it starts with renders as nothing)."""
        return tokenizer.decode(self.ids)

    def catch_up(self, rec: Recurrence) -> tuple[Tensor, Any]:
        """Feed the pending tokens; -> (logits [V], per-layer state) after all of ``ids``."""
        fed, layers, logits = self.head
        if fed < len(self.ids) or logits is None:
            pending = torch.tensor([self.ids[fed:]], dtype=torch.long, device=rec.device)  # [1, T]
            logits, layers = rec.run(pending, layers)
            self.head = (len(self.ids), layers, logits)
        return logits, layers

    def state(self, model: Any) -> Any:
        """The model state ([L, 1, H] or (h, c)) after the fed tokens."""
        return Recurrence(model).join(self.head[1])


@torch.inference_mode()
def prime(model: Any, tokenizer: Tokenizer, prompt: str = "", *, unknown: str = "replace") -> Context:
    """Run ``[END] + prompt`` through the model: the start of every generation.

    Starting with ``[END]`` puts the model where every training document starts, so an
    empty prompt samples a document from its beginning. Symbols the vocabulary lacks
    become ``<unk>`` and are listed in ``Context.unknown`` (``unknown="error"`` refuses
    them instead, naming them).

    >>> ctx = prime(model, tok, "Hello")                               # doctest: +SKIP
    """
    if unknown not in ("replace", "error"):
        raise ValueError(f"unknown must be 'replace' or 'error', got {unknown!r}")
    missing = tokenizer.unknown_symbols(prompt) if prompt else []
    if missing and unknown == "error":
        raise ConfigError(f"the prompt has symbols this {tokenizer.kind} vocabulary lacks: "
                          f"{', '.join(map(repr, missing))}; remove or replace them")
    ctx = Context([tokenizer.end_id] + tokenizer.encode(prompt), (0, None, None), missing)
    ctx.catch_up(Recurrence(model))
    return ctx


def _as_context(model: Any, tokenizer: Tokenizer, prompt: str | Context) -> Context:
    return prompt if isinstance(prompt, Context) else prime(model, tokenizer, prompt)


# ---------------------------------------------------------------------------------------
# choosing tokens


def adjust_logits(logits: Tensor, config: GenerationConfig, seen: Tensor | None, step: int, end_id: int = 0) -> Tensor:
    """Logits [B, V] after the repetition penalty and ``min_new_tokens`` (a new tensor).

    Repetition penalty as CTRL (Keskar et al. 2019) and Hugging Face: a token already in
    the text (``seen`` [B, V] bool) has its logit divided by the penalty if positive,
    multiplied if negative.
    """
    logits = logits.float()
    if seen is not None and config.repetition_penalty != 1.0:
        p = config.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if step < config.min_new_tokens:
        logits = logits.clone()  # never write into the caller's (possibly expanded) tensor
        logits[:, end_id] = -math.inf
    return logits


def choose_tokens(logits: Tensor, config: GenerationConfig, uniforms: Tensor | None) -> Tensor:
    """The next token of each row: logits [B, V] (already adjusted) -> tokens [B].

    Greedy is the argmax. Sampling inverts the cumulative distribution at one uniform
    number per row, ``uniforms`` [B] in [0, 1) (1 is taken too): exact (the chance of
    token v is its probability after temperature, top-k and top-p), and one random number
    per token.
    Top-k keeps the k most likely tokens; top-p then keeps the fewest most likely tokens
    whose probability reaches p of what is left: a token stays while the mass of the more
    likely ones is below p (so always at least one).

    >>> choose_tokens(torch.tensor([[0.0, 2.0, 1.0]]), GenerationConfig(do_sample=False), None)
    tensor([1])
    """
    if not config.do_sample or config.num_beams > 1:
        return logits.argmax(dim=-1)
    assert uniforms is not None
    V = logits.shape[-1]
    probs = torch.softmax(logits.double() / config.temperature, dim=-1)  # [B, V]
    k = V if config.top_k is None else min(config.top_k, V)
    order = None
    if k < V or config.top_p < 1.0:
        probs, order = probs.topk(k, dim=-1)  # [B, k], most likely first
    cdf = probs.cumsum(dim=-1)
    if logits.shape[0] <= _ROWS_IN_PYTHON:
        return _invert_rows(cdf, order, config.top_p, uniforms)
    keep = torch.full_like(uniforms, cdf.shape[1], dtype=torch.long)[:, None]  # [B, 1] tokens kept
    if config.top_p < 1.0:
        keep = torch.searchsorted(cdf, config.top_p * cdf[:, -1:]) + 1  # 1 + #(mass before a token < p)
    total = cdf.gather(1, keep - 1)  # [B, 1] the kept mass
    pos = torch.searchsorted(cdf, uniforms[:, None].to(cdf) * total, right=True)
    # u < 1 makes u * total < total, so pos < keep; at u = 1 (not from torch.rand, but a
    # caller's numbers may hold it) take the last kept token with a probability above 0
    pos = torch.where(pos < keep, pos, torch.searchsorted(cdf, total))
    return (pos if order is None else order.gather(1, pos)).squeeze(1)


# Up to this many rows, choose_tokens inverts the distribution row by row in Python (two
# bisections on a list): ~15 small kernels fewer than the vectorised search, which for
# one stream of a 2x512 LSTM was a fifth of the time per token (benchmarks/sampling.py).
_ROWS_IN_PYTHON = 16


def _invert_rows(cdf: Tensor, order: Tensor | None, top_p: float, uniforms: Tensor) -> Tensor:
    """:func:`choose_tokens`' inversion for a few rows, the same arithmetic (tested equal)."""
    ranked = order.tolist() if order is not None else None
    chosen = []
    for row, (mass, u) in enumerate(zip(cdf.tolist(), uniforms.tolist())):
        keep = bisect.bisect_left(mass, top_p * mass[-1]) + 1 if top_p < 1.0 else len(mass)
        pos = bisect.bisect_right(mass, u * mass[keep - 1], 0, keep)
        if pos == keep:
            pos = bisect.bisect_left(mass, mass[keep - 1], 0, keep)
        chosen.append(pos if ranked is None else ranked[row][pos])
    return torch.tensor(chosen, device=cdf.device)


class _Uniforms:
    """One stream of uniform numbers per sample, drawn from the sample's own generator.

    Drawn in chunks of ``CHUNK`` per row (a Python call per row every CHUNK steps, not
    every step); dropping rows keeps the others' streams as they were.
    """

    CHUNK = 32

    def __init__(self, generators: list[torch.Generator], device: torch.device):
        self.generators = generators
        self.device = device
        self.column = self.CHUNK
        self.buffer: Tensor | None = None

    def next(self) -> Tensor:
        if self.column == self.CHUNK:
            rows = [torch.rand(self.CHUNK, generator=g, dtype=torch.float64) for g in self.generators]
            self.buffer = torch.stack(rows).to(self.device)  # [B, CHUNK]
            self.column = 0
        assert self.buffer is not None
        self.column += 1
        return self.buffer[:, self.column - 1]

    def keep(self, rows: list[int], index: Tensor) -> None:
        self.generators = [self.generators[r] for r in rows]
        if self.buffer is not None:
            self.buffer = self.buffer.index_select(0, index)


def sample_generators(generator: torch.Generator | Sequence[torch.Generator] | None, n: int) -> list[torch.Generator]:
    """One CPU generator per sample: the given list, or seeded from one generator.

    >>> gens = sample_generators(torch.Generator().manual_seed(0), 3)
    >>> len(gens)
    3
    """
    if generator is None:
        generator = torch.Generator()
        generator.seed()  # a fresh random seed, without touching torch's global RNG
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        return [torch.Generator().manual_seed(s) for s in seeds]
    generators = list(generator)
    if len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} samples")
    return generators


def _seen_mask(ids: list[int], rows: int, V: int, device: torch.device, end_id: int) -> Tensor:
    """[rows, V] bool: which tokens the text already has (the repetition penalty's memory)."""
    seen = torch.zeros(rows, V, dtype=torch.bool, device=device)
    prior = [i for i in ids if i != end_id]  # the [END] that starts a document is no repetition
    if prior:
        seen[:, torch.tensor(prior, device=device)] = True
    return seen


# ---------------------------------------------------------------------------------------
# sampling and greedy


def sample_steps(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """Greedy / sampled generation of ``num_return_sequences`` rows as one batch.

    Yields per step ``(rows, tokens)``: the rows still generating and the token each
    chose; a row that chose ``[END]`` is done and leaves the batch. With one row and a
    :class:`Context` as prompt, the context follows the text (see :meth:`Context.extend`).

    >>> for rows, tokens in sample_steps(model, tok, "Hi", GenerationConfig(num_return_sequences=2)):  # doctest: +SKIP
    ...     print(rows, tokens)
    [0, 1] [5, 9]

    Not under ``torch.inference_mode`` as a whole: a generator so decorated enters and
    leaves the mode at every token, ~5 us of a ~300 us token here; the recurrence needs no
    autograd switch (see :meth:`Recurrence.step`).
    """
    config = config or GenerationConfig()
    if config.strategy == "beam":
        raise ConfigError("sample_steps does greedy and sampling; use beam_search for --beam")
    ctx = _as_context(model, tokenizer, prompt)
    follow = isinstance(prompt, Context) and config.num_return_sequences == 1
    rec = Recurrence(model, config.precision)
    end = tokenizer.end_id
    logits, layers = ctx.catch_up(rec)
    B = config.num_return_sequences
    logits = logits.unsqueeze(0).expand(B, -1)  # [B, V]
    if B > 1:
        layers = rec.repeat(layers, B)
    V = logits.shape[-1]
    device = logits.device
    noise = _Uniforms(sample_generators(generator, B), device) if config.strategy == "sample" else None
    seen = _seen_mask(ctx.ids, B, V, device, end) if config.repetition_penalty != 1.0 else None
    rows = list(range(B))
    if follow:
        ctx.stop = None
    for step in range(config.max_new_tokens):
        chosen = choose_tokens(adjust_logits(logits, config, seen, step, end), config,
                               noise.next() if noise is not None else None)  # [B]
        tokens = chosen.tolist()  # the one host sync per step: the caller prints them
        if follow:
            ctx.extend(tokens)
            if tokens[0] == end:
                ctx.stop = "end"
        yield rows, tokens
        if step == config.max_new_tokens - 1:
            if follow:
                ctx.stop = "length"
            return
        if end in tokens:  # those rows are done: drop them from the batch
            keep = [i for i, t in enumerate(tokens) if t != end]
            if not keep:
                return
            index = torch.tensor(keep, device=device)
            rows = [rows[i] for i in keep]
            chosen = chosen.index_select(0, index)
            layers = rec.select(layers, index)
            if noise is not None:
                noise.keep(keep, index)
            if seen is not None:
                seen = seen.index_select(0, index)
        if seen is not None:
            seen[torch.arange(len(rows), device=device), chosen] = True
        logits, layers = rec.step(chosen, layers)
        if follow:
            ctx.head = (len(ctx.ids), layers, logits[0])


@dataclass
class Sample:
    """One generated continuation."""

    ids: list[int]  # new token ids, without the [END] that ended it
    text: str  # their text (as it continues the prompt)
    stop: str  # "end": [END] was produced; "length": max_new_tokens was reached
    score: float | None = None  # beam: summed log-probability of ids (and [END] if stop == "end")
    normalized: float | None = None  # beam: score / length ** length_penalty (what beams compete on)


def generate(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> list[Sample]:
    """``num_return_sequences`` continuations of ``prompt`` (beam search: the n best).

    >>> [s.text for s in generate(model, tok, "The", GenerationConfig(do_sample=False, max_new_tokens=5))]  # doctest: +SKIP
    [' cat ']
    """
    config = config or GenerationConfig()
    ctx = _as_context(model, tokenizer, prompt)
    if config.strategy == "beam":
        return beam_search(model, tokenizer, ctx, config)
    B = config.num_return_sequences
    previous = ctx.ids[-1]  # before a followed context moves on
    ids: list[list[int]] = [[] for _ in range(B)]
    stops = ["length"] * B
    for rows, tokens in sample_steps(model, tokenizer, ctx, config, generator=generator):
        for row, token in zip(rows, tokens):
            if token == tokenizer.end_id:
                stops[row] = "end"
            else:
                ids[row].append(token)
    return [Sample(i, decode_continuation(tokenizer, i, previous), s) for i, s in zip(ids, stops)]


def stream(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """One sample as text pieces, as they come; their concatenation is the sample's text.

    With a :class:`Context` as prompt, the context moves along: the next call continues.

    >>> for piece in stream(model, tok, "Once", GenerationConfig(temperature=0.8)):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    """
    config = (config or GenerationConfig()).replace(num_return_sequences=1)
    ctx = _as_context(model, tokenizer, prompt)
    decoder = TextDecoder(tokenizer, previous=ctx.ids[-1])
    for _, tokens in sample_steps(model, tokenizer, ctx, config, generator=generator):
        if tokens[0] == tokenizer.end_id:
            break
        piece = decoder.push(tokens[0])
        if piece:
            yield piece
    piece = decoder.flush()
    if piece:
        yield piece


def stream_samples(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Iterator[tuple[int, str]]:
    """Several samples computed as one batch, shown one after another as they come.

    Yields ``(sample index, text piece)``: sample 0 live, then sample 1 (what it has
    so far at once, then live), and so on; each sample's pieces concatenate to its text.
    """
    config = config or GenerationConfig()
    ctx = _as_context(model, tokenizer, prompt)
    B = config.num_return_sequences
    decoders = [TextDecoder(tokenizer, previous=ctx.ids[-1]) for _ in range(B)]
    buffers: list[list[str]] = [[] for _ in range(B)]
    done = [False] * B
    shown = 0  # the sample being shown
    for rows, tokens in sample_steps(model, tokenizer, ctx, config, generator=generator):
        for row, token in zip(rows, tokens):
            if token == tokenizer.end_id:
                done[row] = True
            else:
                buffers[row].append(decoders[row].push(token))
        while shown < B:
            if buffers[shown]:
                piece = "".join(buffers[shown])
                buffers[shown] = []
                if piece:
                    yield shown, piece
            if not done[shown]:
                break
            piece = decoders[shown].flush()
            if piece:
                yield shown, piece
            shown += 1
    for row in range(shown, B):  # max_new_tokens reached: the rest at once
        piece = "".join(buffers[row]) + decoders[row].flush()
        if piece:
            yield row, piece


# ---------------------------------------------------------------------------------------
# beam search


@torch.inference_mode()
def beam_search(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str | Context = "",
    config: GenerationConfig | None = None,
) -> list[Sample]:
    """The ``num_return_sequences`` best continuations by beam search of width W.

    A hypothesis's score is the sum of its tokens' log-probabilities (after the
    repetition penalty), ``[END]`` included when it has one; hypotheses compete on
    ``score / length ** length_penalty`` (length in tokens, ``[END]`` included).
    Each step ranks the W x V extensions of the W beams::

        beams [W] ──step──► log p [W, V] + score[:, None] ──top 2W──► in order of score:
            [END] in the first W ranks ──► finished (the W best are kept)
            any other token              ──► next beam, until W of them

    As Hugging Face's default (``early_stopping=False``), the search stops once W
    hypotheses are finished and the best live beam, normalised at its current length,
    cannot beat the worst of them; at ``max_new_tokens`` the live beams join the finished.

    >>> best = beam_search(model, tok, "The", GenerationConfig(num_beams=5, do_sample=False))[0]  # doctest: +SKIP
    """
    config = config or GenerationConfig(num_beams=4, do_sample=False)
    ctx = _as_context(model, tokenizer, prompt)
    rec = Recurrence(model, config.precision)
    end = tokenizer.end_id
    W, alpha, L = config.num_beams, config.length_penalty, config.max_new_tokens
    logits, layers = ctx.catch_up(rec)
    logits = logits.unsqueeze(0)  # [1, V]
    V = logits.shape[-1]
    device = logits.device
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64, device=device)  # [k] summed log-probs of live beams
    seen = _seen_mask(ctx.ids, 1, V, device, end) if config.repetition_penalty != 1.0 else None
    finished: list[tuple[float, float, list[int], str]] = []  # (normalised, score, ids, stop), best first

    def add(score: float, ids: list[int], length: int, stop: str) -> None:
        finished.append((score / length**alpha, score, ids, stop))
        finished.sort(key=lambda h: -h[0])
        del finished[W:]

    for step in range(L):
        logp = torch.log_softmax(adjust_logits(logits, config, seen, step, end), dim=-1, dtype=torch.float64)  # [k, V]
        candidates = (scores[:, None] + logp).view(-1)  # [k * V]
        top_scores, top_index = candidates.topk(min(2 * W, candidates.numel()))
        beams: list[int] = []
        tokens: list[int] = []
        ranks: list[int] = []  # of the new beams among the top 2W
        new_scores: list[float] = []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            beam, token = divmod(index, V)
            if token == end:
                if rank < W and score > -math.inf:
                    add(score, seqs[beam], step + 1, "end")
                continue
            if score == -math.inf:
                break
            beams.append(beam)
            tokens.append(token)
            ranks.append(rank)
            new_scores.append(score)
            if len(beams) == W:
                break
        seqs = [seqs[b] + [t] for b, t in zip(beams, tokens)]
        if step == L - 1 or not beams:
            for ids, score in zip(seqs, new_scores):
                add(score, ids, L, "length")
            break
        if len(finished) >= W and new_scores[0] / (step + 1) ** alpha <= finished[-1][0]:
            break
        index, chosen, at = torch.tensor([beams, tokens, ranks], device=device)  # one copy, not three
        layers = rec.select(layers, index)
        if seen is not None:
            seen = seen.index_select(0, index)
            seen[torch.arange(len(beams), device=device), chosen] = True
        scores = top_scores.index_select(0, at)  # = new_scores
        logits, layers = rec.step(chosen, layers)
    previous = ctx.ids[-1]
    return [Sample(ids, decode_continuation(tokenizer, ids, previous), stop, score, norm)
            for norm, score, ids, stop in finished[: config.num_return_sequences]]


# ---------------------------------------------------------------------------------------
# text, incrementally

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


class TextDecoder:
    """Token ids -> text pieces, one token at a time, in O(1) per token.

    The concatenation of the pieces equals ``tokenizer.decode`` of the ids (char, word
    and SentencePiece tokenizers), continuing a text whose last token was ``previous``:
    a word gets its leading space unless it starts a line or document; SentencePiece
    byte pieces are held back until they form whole UTF-8 characters. ``[END]`` is a
    document break, ``"\\n"``.

    >>> from lmgen.tokenizer import build_tokenizer
    >>> tok = build_tokenizer("word", ["the cat sat"])
    >>> d = TextDecoder(tok)
    >>> [d.push(i) for i in tok.encode("the cat")]
    ['the', ' cat']
    """

    def __init__(self, tokenizer: Tokenizer, previous: int | None = None):
        self.tokenizer = tokenizer
        self.kind = tokenizer.kind
        self.end = tokenizer.end_id
        self.previous = self.end if previous is None else previous
        self._surface: dict[int, str] = {}
        self._bytes: list[int] = []  # spm: byte pieces waiting to form characters
        self._newline = {i for i, p in enumerate(tokenizer.pieces) if p == "\n"} if self.kind == "word" else set()

    def surface(self, token: int) -> str:
        text = self._surface.get(token)
        if text is None:
            text = self._surface[token] = self.tokenizer.decode([token])
        return text

    def push(self, token: int) -> str:
        """The text that ``token`` adds (may be empty: spm bytes of an unfinished character)."""
        previous, self.previous = self.previous, token
        if token == self.end:
            return self.flush() + "\n"
        if self.kind == "word":
            glue = previous == self.end or previous in self._newline or token in self._newline
            return ("" if glue else " ") + self.surface(token)
        if self.kind == "spm" and _BYTE_PIECE.fullmatch(self.tokenizer.pieces[token]):
            self._bytes.append(token)
            try:
                bytes(int(self.tokenizer.pieces[t][3:5], 16) for t in self._bytes).decode("utf-8")
            except UnicodeDecodeError:
                return ""  # wait for the rest of the character
            return self.flush()
        return self.flush() + self.surface(token)

    def flush(self) -> str:
        """Whatever is held back (spm bytes that never completed a character)."""
        if not self._bytes:
            return ""
        text = self.tokenizer.decode(self._bytes)
        self._bytes = []
        return text


def decode_continuation(tokenizer: Tokenizer, ids: Sequence[int], previous: int | None = None) -> str:
    """Text of ``ids`` as it continues a text whose last token is ``previous``."""
    decoder = TextDecoder(tokenizer, previous)
    return "".join(decoder.push(i) for i in ids) + decoder.flush()


# ---------------------------------------------------------------------------------------
# compatibility with the first version of this module


def sample_ids(
    model: Any,
    tokenizer: Tokenizer,
    prompt: str = "",
    *,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield sampled token ids one by one until ``[END]`` (not yielded) or ``max_new_tokens``."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    for _, tokens in sample_steps(model, tokenizer, prompt, config, generator=generator):
        if tokens[0] == tokenizer.end_id:
            return
        yield tokens[0]


def stream_text(tokenizer: Tokenizer, ids: Iterator[int], previous: int | None = None) -> Iterator[str]:
    """A stream of ids -> a stream of text pieces whose concatenation is ``decode(ids)``."""
    decoder = TextDecoder(tokenizer, previous)
    for token in ids:
        piece = decoder.push(token)
        if piece:
            yield piece
    piece = decoder.flush()
    if piece:
        yield piece


# ---------------------------------------------------------------------------------------
# the interactive session (lmgen repl): all its logic, none of its I/O

REPL_HELP = """\
Type a prompt and press Enter: its continuation streams below it (a new document).
An empty line (or :continue) continues the text so far with its state.
  :continue TEXT   append TEXT to the text so far, then continue
  :temp T          sample with temperature T > 0            (also :temperature)
  :top-k K         sample among the K most likely tokens    (:top-k off: all)
  :top-p P         sample from the nucleus of mass P in (0, 1]
  :sample          sample (with the settings above)
  :greedy          always take the most likely token
  :beam W          beam search of width W (shown when done)
  :length-penalty A  beam: rank by log-prob / length**A
  :repetition-penalty R  penalise tokens already in the text (1: off)
  :max N           stop after N new tokens        :min N  no [END] before N tokens
  :seed N          restart the random numbers from seed N
  :precision P     step weights: float16 (fast, CPU), float32 (exact) or auto
  :show            the current settings
  :reset           forget the text (the next one starts a new document)
  :help            this help                      :quit  leave (or Ctrl-D)
Ctrl-C stops a generation and returns to the prompt."""

# repl command -> (setting, parser); the setting names are config_from_flags' keywords
_REPL_VALUES = {
    "temp": "temperature", "temperature": "temperature", "t": "temperature",
    "top-k": "top_k", "topk": "top_k", "k": "top_k",
    "top-p": "top_p", "topp": "top_p", "p": "top_p",
    "beam": "beam",
    "length-penalty": "length_penalty", "lp": "length_penalty",
    "repetition-penalty": "repetition_penalty", "rep": "repetition_penalty",
    "max": "max_new_tokens", "max-new-tokens": "max_new_tokens",
    "min": "min_new_tokens", "min-new-tokens": "min_new_tokens",
    "seed": "seed",
}
_INTS = {"top_k", "beam", "max_new_tokens", "min_new_tokens", "seed"}
# flags in validation messages -> the repl command that sets them
_REPL_NAMES = {"--temperature": ":temp", "--top-k": ":top-k", "--top-p": ":top-p", "--beam": ":beam",
               "--length-penalty": ":length-penalty", "--repetition-penalty": ":repetition-penalty",
               "--max-new-tokens": ":max", "--min-new-tokens": ":min", "--greedy": ":greedy"}


class Session:
    """The state of an interactive session: settings, random numbers, the text so far.

    ``lmgen repl`` only reads lines, calls :meth:`handle` or :meth:`generate`, and prints.

    >>> s = Session(model, tok)                                        # doctest: +SKIP
    >>> s.handle(":temp 0.7")                                          # doctest: +SKIP
    'temperature 0.7 (sampling)'
    >>> print("".join(s.generate("Once")))                             # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Tokenizer, config: GenerationConfig | None = None, seed: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        config = config or config_from_flags()
        self.mode = config.strategy
        self.settings: dict[str, Any] = {
            "temperature": config.temperature if config.strategy == "sample" else 0.8,
            "top_k": config.top_k, "top_p": config.top_p,
            "beam": config.num_beams if config.num_beams > 1 else 4, "length_penalty": config.length_penalty,
            "repetition_penalty": config.repetition_penalty,
            "max_new_tokens": config.max_new_tokens, "min_new_tokens": config.min_new_tokens,
            "precision": config.precision,
        }
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.context: Context | None = None
        self.quit = False

    @property
    def config(self) -> GenerationConfig:
        return self._config(self.mode, self.settings)

    @staticmethod
    def _config(mode: str, s: dict[str, Any]) -> GenerationConfig:
        common = dict(repetition_penalty=s["repetition_penalty"], max_new_tokens=s["max_new_tokens"],
                      min_new_tokens=s["min_new_tokens"], precision=s["precision"])
        if mode == "beam":
            return GenerationConfig(num_beams=s["beam"], do_sample=False, length_penalty=s["length_penalty"], **common)
        return GenerationConfig(do_sample=mode == "sample", temperature=s["temperature"], top_k=s["top_k"],
                                top_p=s["top_p"], **common)

    def show(self) -> str:
        """The current settings, one line."""
        s = self.settings
        if self.mode == "sample":
            how = f"sampling: temperature {s['temperature']:g}, top-k {s['top_k'] or 'off'}, top-p {s['top_p']:g}"
        elif self.mode == "beam":
            how = f"beam search: width {s['beam']}, length penalty {s['length_penalty']:g}"
        else:
            how = "greedy"
        text = f"{len(self.context.ids) - 1} tokens of text" if self.context else "no text yet"
        return (f"{how}; repetition penalty {s['repetition_penalty']:g}; max {s['max_new_tokens']} "
                f"(min {s['min_new_tokens']}) new tokens; weights {s['precision']}; seed {self.seed}; {text}")

    def handle(self, line: str) -> str:
        """Run one ``:command``; returns what to print. Raises ConfigError (message for
        the user, settings unchanged) on an unknown command or a bad value."""
        name, _, value = line.strip()[1:].partition(" ")
        name, value = name.lower(), value.strip()
        if name in ("quit", "q", "exit"):
            self.quit = True
            return "bye"
        if name in ("help", "h", "?"):
            return REPL_HELP
        if name == "show":
            return self.show()
        if name == "reset":
            self.context = None
            self.generator = torch.Generator().manual_seed(self.seed)
            return f"text forgotten; random numbers restarted from seed {self.seed}"
        if name in ("greedy", "sample"):
            self.mode = name
            return self.show()
        if name == "precision":
            if value not in PRECISIONS:
                raise ConfigError(f":precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
            Recurrence(self.model, value)  # refuses float16 where it cannot run, naming why
            self.settings = dict(self.settings, precision=value)
            return self.show()
        if name not in _REPL_VALUES:
            raise ConfigError(f"unknown command :{name}")
        key = _REPL_VALUES[name]
        if not value:
            raise ConfigError(f":{name} needs a value, e.g. :{name} {'5' if key in _INTS else '0.9'}")
        try:
            parsed: Any = None if (key == "top_k" and value.lower() in ("off", "none", "0")) else (
                int(value) if key in _INTS else float(value))
        except ValueError:
            raise ConfigError(f":{name} needs a {'whole ' if key in _INTS else ''}number, got {value!r}") from None
        if key == "seed":
            self.seed = parsed
            self.generator = torch.Generator().manual_seed(parsed)
            return f"seed {parsed}"
        settings = dict(self.settings, **{key: parsed})
        mode = {"temperature": "sample", "top_k": "sample", "top_p": "sample", "beam": "beam",
                "length_penalty": "beam"}.get(key, self.mode)
        try:
            self._config(mode, settings)
        except ConfigError as exc:
            message = str(exc)
            for flag_name, command in _REPL_NAMES.items():
                message = message.replace(flag_name, command)
            raise ConfigError(message) from None
        self.settings, self.mode = settings, mode
        return self.show()

    def generate(self, text: str | None = None, *, continue_text: bool = False) -> Iterator[str]:
        """Text pieces: ``text`` itself, then its continuation as it comes.

        ``text`` starts a new document unless ``continue_text`` (or ``text`` is empty /
        None), which continues the text so far with its state. After it, ``self.context``
        holds the text and state; stopping early (Ctrl-C) keeps what was generated.
        Check :attr:`unknown` for prompt symbols that became ``<unk>``.
        """
        self.unknown: list[str] = []
        if text and not continue_text:
            self.context = prime(self.model, self.tokenizer, text)
            self.unknown = self.context.unknown
            yield text
        else:
            if self.context is None:
                self.context = prime(self.model, self.tokenizer, "")
            elif self.context.ids[-1] == self.tokenizer.end_id and len(self.context.ids) > 1:
                yield "\n"  # the last document ended: a new one starts on its own line
            if text:
                self.unknown = self.tokenizer.unknown_symbols(text)
                self.context.extend(self.tokenizer.encode(text))
                yield text
        config = self.config
        if config.strategy == "beam":
            best = beam_search(self.model, self.tokenizer, self.context, config)[0]
            self.context.extend(best.ids + ([self.tokenizer.end_id] if best.stop == "end" else []))
            self.context.stop = best.stop
            yield best.text
        else:
            yield from stream(self.model, self.tokenizer, self.context, config, generator=self.generator)
