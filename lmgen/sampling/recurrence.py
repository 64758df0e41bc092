"""The model unrolled one token per call: the step engines generation runs on.

:class:`Recurrence` steps an :class:`~lmgen.model.RNNLM` with float32 weights (the
model's own numbers) or, on x86 CPUs, with packed float16 copies of the weight matrices
(:class:`_PackedLinear`, fbgemm). The cell maths itself (gate order, pointwise update)
is :mod:`lmgen.cells`; this module chooses the kernels that feed it and keeps the state
per layer. ``Recurrence.run`` primes a whole prompt with the model's fused forward.

>>> rec = Recurrence(model, "auto")                                 # doctest: +SKIP
>>> logits, layers = rec.step(torch.tensor([5]), rec.split(model.init_state(1)))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import cells
from ..errors import ConfigError
from ..generation import PRECISIONS
from ..intervene import active as active_edits


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
        self.fast = cell in cells.MODULES and cells.is_stack(rnn)
        self.cell = cell
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        self.device = params[0].device if params else torch.device("cpu")
        possible = self.fast and self.device.type == "cpu" and half_supported()
        if precision == "float16" and not possible:
            raise ConfigError("--precision float16 needs an LSTM/GRU/RNN model on the CPU and a torch build with "
                              "fbgemm (x86); use --precision float32 or auto")
        self.half = possible and precision != "float32"
        self.precision = "float16" if self.half else "float32"
        # units set by lmgen.intervene.intervene while this engine was made (None: the plain steps)
        self.edits = active_edits(model) if self.fast else None
        if self.fast:
            self.num_layers = rnn.num_layers
            self.sizes = cells.layer_sizes(rnn)  # the state is [L, B, max H_l]: layer l uses H_l units
            self.weights = [tuple(w.detach() for w in cells.layer_weights(rnn, layer))
                            for layer in range(rnn.num_layers)]
            self.embedding = model.embedding.weight.detach()
            # An adaptive softmax (lmgen.softmax) is called as the model's module: its clusters
            # are small products already; a linear decoder is two detached tensors.
            linear = isinstance(model.decoder, torch.nn.Linear)
            self.decoder = (model.decoder.weight.detach(), model.decoder.bias.detach()) if linear else None
            self.decode: Any = functools.partial(F.linear, weight=self.decoder[0], bias=self.decoder[1]) \
                if linear else _no_grad(model.decoder)
            if self.half:
                self._pack(params)
            elif cell == "lstm":
                # LSTM by hand: at B = 1 torch.lstm_cell takes ~2x the time of its two
                # matrix-vector products. Both biases are summed once, and when it is small
                # (V x 4H floats) the first layer's input projection of every token is a table:
                # one row lookup instead of an [E, 4H] product per step.
                with torch.no_grad():
                    self.bias = [cells.split_bias(cell, b_ih, b_hh)[0] for _, _, b_ih, b_hh in self.weights]
                    V, G = self.embedding.shape[0], self.weights[0][0].shape[0]
                    self.table = (F.linear(self.embedding, self.weights[0][0], self.bias[0])
                                  if V * G <= self.TABLE_LIMIT else None)  # [V, 4H]

    def _pack(self, params: list[Tensor]) -> None:
        """Packed float16 layers (cached per model until a weight changes).

        Per layer ``(inp, rec, both)``. The first layer's input projection of every token,
        when small (V x G floats), is a float32 table of the float16-rounded product: a row
        lookup. An LSTM or tanh RNN sums its two projections, so a deeper layer multiplies
        [x, h] by [W_ih | W_hh] in one call (``both``, both biases inside); a GRU keeps
        them apart (b_hh sits inside r * (...), see :func:`lmgen.cells.split_bias`).
        """
        try:
            key: tuple | None = tuple((id(p), p._version) for p in params)
        except RuntimeError:  # inference tensors keep no version counter: never trust a cache
            key = None
        cached = _PACKED.get(self.model)
        if key is not None and cached is not None and cached[0] == key:
            self.layers, self.out = cached[1]
            return
        layers: list[tuple[Any, Any, Any]] = []
        with torch.no_grad():
            for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.weights):
                b_in, b_rec = cells.split_bias(self.cell, b_ih, b_hh)
                if layer == 0:
                    if self.embedding.shape[0] * w_ih.shape[0] <= self.TABLE_LIMIT:
                        table = F.linear(self.embedding, w_ih.half().float(), b_in)  # [V, G]
                        inp: Any = functools.partial(F.embedding, weight=table)
                    else:
                        # bound by partial, not through self: the cache value must not
                        # reference the model it is keyed by, or the model is never freed
                        inp = functools.partial(_embed_project, project=_PackedLinear(w_ih, b_in),
                                                embedding=self.embedding)
                    layers.append((inp, _PackedLinear(w_hh, b_rec), None))
                elif b_rec is not None:  # GRU: the two projections stay apart
                    layers.append((_PackedLinear(w_ih, b_in), _PackedLinear(w_hh, b_rec), None))
                else:
                    layers.append((None, None, _PackedLinear(torch.cat([w_ih, w_hh], 1), b_in)))
            self.layers = layers
            self.out = _PackedLinear(*self.decoder) if self.decoder is not None else self.decode
        _PACKED[self.model] = (key, (self.layers, self.out))

    # -- state formats ---------------------------------------------------------------

    def split(self, state: Any) -> Any:
        """Model state ([L, B, H], or (h, c)) -> per-layer list."""
        if not self.fast:
            return state
        sizes = self.sizes
        if self.cell == "lstm":
            h, c = state
            return [(h[layer, :, : sizes[layer]], c[layer, :, : sizes[layer]]) for layer in range(self.num_layers)]
        return [state[layer, :, : sizes[layer]] for layer in range(self.num_layers)]

    def join(self, layers: Any) -> Any:
        """Per-layer list -> model state ([L, B, H], or (h, c))."""
        if not self.fast:
            return layers
        width = max(self.sizes)

        def stack(parts: list[Tensor]) -> Tensor:  # layers of different sizes: zero-padded to the widest
            return torch.stack([F.pad(p, (0, width - p.shape[-1])) for p in parts])

        if self.cell == "lstm":
            return (stack([h for h, _ in layers]), stack([c for _, c in layers]))
        return stack(layers)

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
        if self.edits is not None:
            return self._edited_step(tokens, layers)
        if self.half:
            return self._half_step(tokens, layers)
        if self.cell == "lstm":
            return self._lstm_step(tokens, layers)
        x = F.embedding(tokens, self.embedding)  # [B, E]
        new = []
        for weights, s in zip(self.weights, layers):
            s = cells.fused_step(self.cell, x, s, weights)  # h [B, H]
            new.append(s)
            x = s
        return self.decode(x), new  # [B, V]

    def _lstm_step(self, tokens: Tensor, layers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Any]:
        new = []
        x = tokens
        for layer, ((w_ih, w_hh, _, _), s) in enumerate(zip(self.weights, layers)):
            if layer == 0 and self.table is not None:
                gates = torch.addmm(self.table[tokens], s[0], w_hh.t())  # [B, 4H]: i, f, g, o
            else:
                if layer == 0:
                    x = F.embedding(tokens, self.embedding)  # [B, E]
                gates = torch.addmm(torch.addmm(self.bias[layer], x, w_ih.t()), s[0], w_hh.t())
            s = cells.update("lstm", gates, None, s)  # (h, c) [B, H] each
            new.append(s)
            x = s[0]
        return self.decode(x), new  # [B, V]

    def _half_step(self, tokens: Tensor, layers: list[Any]) -> tuple[Tensor, Any]:
        """One step with the packed float16 weights."""
        x = tokens
        new = []
        for (inp, rec, both), s in zip(self.layers, layers):
            h = cells.output(self.cell, s)
            if both is None:  # [B, G*H] each; a GRU keeps them apart, the others sum them
                s = cells.update(self.cell, inp(x), rec(h), s)
            else:
                s = cells.update(self.cell, both(torch.cat([x, h], 1)), None, s)
            new.append(s)
            x = cells.output(self.cell, s)
        return self.out(x), new  # [B, V]

    def _edited_step(self, tokens: Tensor, layers: list[Any]) -> tuple[Tensor, Any]:
        """One step under an intervention (:mod:`lmgen.intervene`): each layer's projections
        as the plain step of this precision computes them, then :func:`lmgen.cells.update_edited`
        on a layer with edits (the plain :func:`lmgen.cells.update` on the others)."""
        x = tokens
        new = []
        for layer, s in enumerate(layers):
            a, b = self._projections(layer, x, s)
            edit = self.edits[layer]
            s = cells.update(self.cell, a, b, s) if edit is None else cells.update_edited(self.cell, a, b, s, edit)
            new.append(s)
            x = cells.output(self.cell, s)
        return (self.out if self.half else self.decode)(x), new  # [B, V]

    def _projections(self, layer: int, x: Tensor, s: Any) -> tuple[Tensor, Tensor | None]:
        """Layer ``layer``'s (a, b) for :func:`lmgen.cells.update` from its input x (tokens [B]
        for layer 0, else [B, H_in]) and its state s."""
        h = cells.output(self.cell, s)
        if self.half:
            inp, rec, both = self.layers[layer]
            return (inp(x), rec(h)) if both is None else (both(torch.cat([x, h], 1)), None)
        w_ih, w_hh, b_ih, b_hh = self.weights[layer]
        if self.cell == "lstm":
            if layer == 0 and self.table is not None:
                return torch.addmm(self.table[x], h, w_hh.t()), None
            x = F.embedding(x, self.embedding) if layer == 0 else x
            return torch.addmm(torch.addmm(self.bias[layer], x, w_ih.t()), h, w_hh.t()), None
        x = F.embedding(x, self.embedding) if layer == 0 else x
        b_in, b_rec = cells.split_bias(self.cell, b_ih, b_hh)
        if b_rec is None:
            return torch.addmm(torch.addmm(b_in, x, w_ih.t()), h, w_hh.t()), None
        return F.linear(x, w_ih, b_in), F.linear(h, w_hh, b_rec)

    def run(self, tokens: Tensor, layers: Any, outputs: bool = False) -> tuple[Any, ...]:
        """A whole sequence tokens [1, T] through the model -> logits [V] after the last
        one and the new per-layer state (priming: one fused call for the prompt).

        ``outputs=True`` also returns the last layer's output at every step, [1, T, H]
        (what a continuous cache stores).
        """
        with _eval_mode(self.model), torch.no_grad():
            state = None if layers is None else self.join(layers)
            if outputs:
                logits, state, (h, _) = self.model(tokens, state, return_outputs=True)
                return logits[0, -1], self.split(state), h
            logits, state = self.model(tokens, state)
        return logits[0, -1], self.split(state)

    def output(self, layers: Any) -> Tensor:
        """The last layer's output in a per-layer state, [B, H]: what the decoder read at this step."""
        if not self.fast:
            raise ConfigError("a continuous cache needs the hidden states of an LSTM, GRU or RNN model")
        return cells.output(self.cell, layers[-1])


def _no_grad(module: Any) -> Any:
    """``module`` called without autograd (the step engines' weights are detached; so is this)."""
    def call(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x)
    return call


def _embed_project(tokens: Tensor, project: _PackedLinear, embedding: Tensor) -> Tensor:
    """The first layer's input projection when it is too large for a table: tokens [B] -> [B, G]."""
    return project(F.embedding(tokens, embedding))


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
