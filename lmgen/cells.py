"""The recurrent cells (LSTM, GRU, tanh RNN) in one place: weight layout, gate order, step maths.

The model trains and primes with PyTorch's fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``,
built here (:func:`build`). Everything that computes a cell outside that fused call, the
sampling step engines (:mod:`lmgen.sampling.recurrence`), :func:`lmgen.activations.trace`
and the gradient view (:mod:`lmgen.gradients`), reads the weights and does the maths
through this module. A change to a cell (weight drop, a unit clamped in every forward
path, a new dropout) is then made here once.

Layer l of a fused module, in PyTorch's layout (G gate blocks of H rows each)::

    weight_ih_l{l}  [G*H, E]  (deeper layers [G*H, H])      bias_ih_l{l}  [G*H]
    weight_hh_l{l}  [G*H, H]                                 bias_hh_l{l}  [G*H]

    cell  G  blocks in row order   one step, with a = x W_ih^T + b_ih and b = h W_hh^T + b_hh
    lstm  4  i f g o               i f o = sigmoid(a + b), g = tanh(a + b); c' = f c + i g; h' = o tanh(c')
    gru   3  r z n                 r z = sigmoid(a + b); n = tanh(a_n + r b_n); h' = (1 - z) n + z h
    rnn   1  (one block)           h' = tanh(a + b)

A GRU's b_hn sits inside ``r * (...)``, so its two biases cannot be summed into one; an
LSTM's and an RNN's can (:func:`split_bias`).

>>> rnn = build("gru", input_size=4, hidden=3, layers=1)
>>> [tuple(w.shape) for w in layer_weights(rnn, 0)]
[(9, 4), (9, 3), (9,), (9,)]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor, nn

# What trace records per step, state first: the cell's state, then its gates.
KINDS = {"lstm": ("h", "c", "i", "f", "g", "o"), "gru": ("h", "r", "z", "n"), "rnn": ("h",)}
# Gates squashed by a sigmoid: their natural centre is 0.5, not 0 (colour scales, saturation).
SIGMOID_KINDS = frozenset("ifozr")
# The blocks of a layer's weight rows, in PyTorch's order.
GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("h",)}
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# ATen's fused one-step kernels (their arithmetic is nn.LSTM's / nn.GRU's / nn.RNN's).
_ATEN_STEPS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}
# ... and whole-sequence kernels: what nn.LSTM / nn.GRU / nn.RNN call, here on weights we pass.
_ATEN_SEQUENCES = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}

Weights = tuple[Tensor, Tensor, Tensor, Tensor]  # w_ih [G*H, E], w_hh [G*H, H], b_ih [G*H], b_hh [G*H]
# One layer's state: LSTM (h, c), each [B, H]; GRU and RNN h [B, H].
LayerState = Union[Tensor, tuple[Tensor, Tensor]]


# -- layout ----------------------------------------------------------------------------


def build(cell: str, input_size: int, hidden: int | Sequence[int], layers: int, dropout: float = 0.0) -> nn.Module:
    """The stacked cells (batch first) as the model uses them: PyTorch's fused module when
    every layer has the same size, else a :class:`LayerStack` (``hidden`` one size per layer)."""
    sizes = [hidden] * layers if isinstance(hidden, int) else list(hidden)
    if len(set(sizes)) > 1:
        return LayerStack(cell, input_size, sizes, dropout=dropout)
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    return MODULES[cell](input_size, sizes[0], num_layers=layers, dropout=dropout, batch_first=True, **kwargs)


class LayerStack(nn.Module):
    """Stacked one-layer cells of different sizes (``--hidden 1150,1150,400``, AWD-LSTM's shape).

    PyTorch's fused modules need one size for every layer. This one holds the same
    parameters under the same names (``weight_ih_l{l}``, ...; so :func:`layer_weights`,
    checkpoints and every step engine read it as they read a fused module) and runs the
    layers one fused kernel call each (:func:`run_stack`). Its state is [L, B, max H_l]:
    layer l uses its first H_l units and the rest stay zero, so everything that carries,
    selects or saves a state handles it as it handles a fused module's.
    """

    bias = True
    batch_first = True

    def __init__(self, cell: str, input_size: int, sizes: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.cell, self.sizes, self.dropout = cell, list(sizes), dropout
        self.num_layers, self.hidden_size = len(self.sizes), max(self.sizes)
        G = len(GATES[cell])
        inputs = [input_size] + self.sizes[:-1]
        for layer, (inp, H) in enumerate(zip(inputs, self.sizes)):
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(G * H, inp)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(G * H, H)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(G * H)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(G * H)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each layer as PyTorch initialises a fused one: U(-1/sqrt(H_l), 1/sqrt(H_l))."""
        for layer, H in enumerate(self.sizes):
            for w in layer_weights(self, layer):
                nn.init.uniform_(w, -1.0 / math.sqrt(H), 1.0 / math.sqrt(H))

    def forward(self, x: Tensor, state: LayerState | None = None) -> tuple[Tensor, LayerState]:
        """x [B, T, E] -> out [B, T, H_last] and the state [L, B, max H] after the last step."""
        weights = [layer_weights(self, layer) for layer in range(self.num_layers)]
        return run_stack(self.cell, x, state, weights, dropout=self.dropout, train=self.training)

    def extra_repr(self) -> str:
        return f"{self.cell}, sizes={self.sizes}, dropout={self.dropout}"


def cell_of(rnn: nn.Module) -> str:
    """"lstm", "gru" or "rnn" for a fused module or a :class:`LayerStack`."""
    if isinstance(rnn, LayerStack):
        return rnn.cell
    return {cls: name for name, cls in MODULES.items()}[type(rnn)]


def layer_sizes(rnn: nn.Module) -> list[int]:
    """The hidden size of each layer of a fused module or a :class:`LayerStack`."""
    return list(rnn.sizes) if isinstance(rnn, LayerStack) else [rnn.hidden_size] * rnn.num_layers


def is_stack(module: Any) -> bool:
    """Whether ``module`` is recurrent layers this module can read (fused or :class:`LayerStack`)."""
    return isinstance(module, (nn.RNNBase, LayerStack))


def gate_rows(cell: str, gate: str, hidden: int) -> slice:
    """The rows of ``gate`` in a layer's weights and biases, e.g. the LSTM forget gate [H, 2H).

    >>> gate_rows("lstm", "f", 8)
    slice(8, 16, None)
    """
    k = GATES[cell].index(gate)
    return slice(k * hidden, (k + 1) * hidden)


def set_forget_bias(rnn: nn.Module, value: float) -> None:
    """An LSTM's forget-gate bias: ``value`` in every layer's b_ih, 0 in its b_hh."""
    with torch.no_grad():
        for layer, H in enumerate(layer_sizes(rnn)):
            rows = gate_rows("lstm", "f", H)
            getattr(rnn, f"bias_ih_l{layer}")[rows].fill_(value)
            getattr(rnn, f"bias_hh_l{layer}")[rows].fill_(0.0)


def layer_weights(rnn: nn.Module, layer: int) -> Weights:
    """``(w_ih, w_hh, b_ih, b_hh)`` of one layer of a fused module (zero biases if it has none).

    The parameters themselves, not copies: detach them to step without autograd.
    """
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
    H = w_hh.shape[1]
    zeros = torch.zeros(w_ih.shape[0], device=w_ih.device, dtype=w_ih.dtype)
    b_ih = getattr(rnn, f"bias_ih_l{layer}", zeros) if rnn.bias else zeros
    b_hh = getattr(rnn, f"bias_hh_l{layer}", zeros) if rnn.bias else zeros
    assert w_hh.shape[0] % H == 0
    return w_ih, w_hh, b_ih, b_hh


def split_bias(cell: str, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor | None]:
    """(bias added to the input projection, bias that must stay with the recurrent one).

    LSTM and RNN: one summed bias, outside every product, and None. GRU: b_hh stays with
    the recurrent product, since r multiplies (W_hn h + b_hn).
    """
    if cell == "gru":
        return b_ih, b_hh
    return b_ih + b_hh, None


def single_layer(rnn: nn.Module, layer: int) -> nn.RNNBase:
    """A one-layer copy of layer ``layer`` of a fused nn.LSTM/GRU/RNN or a :class:`LayerStack`
    (same kernel, same numbers)."""
    cell = cell_of(rnn)
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    single = MODULES[cell](w_ih.shape[1], w_hh.shape[1], num_layers=1, bias=rnn.bias, batch_first=True, **kwargs)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
    single.load_state_dict({f"{n}_l0": getattr(rnn, f"{n}_l{layer}").detach() for n in names})
    return single.to(w_ih.device)


# -- one step ----------------------------------------------------------------------------


def zero_state(cell: str, batch: int, hidden: int, like: Tensor) -> LayerState:
    """One layer's zero state for ``batch`` rows (dtype and device of ``like``)."""
    h = like.new_zeros(batch, hidden)
    return (h, h.clone()) if cell == "lstm" else h


def output(cell: str, state: LayerState) -> Tensor:
    """A layer's output h [B, H] (what the next layer reads) from its state."""
    return state[0] if cell == "lstm" else state


def fused_step(cell: str, x: Tensor, state: LayerState, weights: Weights) -> LayerState:
    """One step of one layer with ATen's fused cell: x [B, E] and the state -> the new state.

    Differentiable when ``weights`` are parameters (the gradient view steps this way).
    """
    return _ATEN_STEPS[cell](x, state, *weights)


def update(cell: str, a: Tensor, b: Tensor | None, state: LayerState) -> LayerState:
    """One step's pointwise maths: the projections -> the new state.

    ``a`` [B, G*H] is x W_ih^T plus the input bias of :func:`split_bias`; ``b`` is
    h W_hh^T plus the recurrent bias, or None when it is already summed into ``a``
    (a GRU needs it apart). ``a`` is scratch: it is overwritten.
    """
    if cell == "gru":
        assert b is not None
        r, z, n = gru_gates(a, b)
        return torch.addcmul(n, z, state - n)  # (1 - z) * n + z * h
    pre = a if b is None else a.add_(b)
    if cell == "lstm":
        i, f, g, o = lstm_gates(pre)
        c = torch.addcmul(f * state[1], i, g)
        return o * c.tanh(), c
    return pre.tanh_()


def lstm_gates(pre: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LSTM pre-activations [..., 4H] -> gates i, f, g, o [..., H] each (``pre`` is overwritten)."""
    H = pre.shape[-1] // 4
    g = pre[..., 2 * H : 3 * H].tanh()  # before the in-place sigmoid of all four blocks
    i, f, _, o = pre.sigmoid_().chunk(4, -1)  # one kernel for the three sigmoid gates
    return i, f, g, o


def gru_gates(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GRU projections a, b [..., 3H] -> r, z, n [..., H] each (``a`` is overwritten)."""
    H = b.shape[-1] // 3
    r, z = a[..., : 2 * H].add_(b[..., : 2 * H]).sigmoid_().chunk(2, -1)
    n = torch.addcmul(a[..., 2 * H :], r, b[..., 2 * H :]).tanh_()  # r after the recurrent product (cuDNN style)
    return r, z, n


# An intervention on one layer (lmgen.intervene): ``edit(kind, values [B, H])`` returns the
# values every later node reads in place of ``values`` (the same tensor where it changes nothing).
Edit = Callable[[str, Tensor], Tensor]


def update_edited(cell: str, a: Tensor, b: Tensor | None, state: LayerState, edit: Edit,
                  seen: dict[str, Tensor] | None = None) -> LayerState:
    """:func:`update` with units set by ``edit``: each node of the step (gates, c, h) is
    passed through ``edit`` as soon as it is computed, and every node after it reads the
    edited value. A clamped c_t is what h_t = o_t tanh(c_t) and the next step read; a
    clamped gate is what c_t (h_t) is made of. ``seen`` collects every kind's value
    (:data:`KINDS`), edited, for a trace. Kept apart from :func:`update`, the generation hot
    loop, which it equals where ``edit`` changes nothing (the same operations in the same order).
    """
    if cell == "gru":
        assert b is not None
        H = b.shape[-1] // 3
        r, z = a[..., : 2 * H].add_(b[..., : 2 * H]).sigmoid_().chunk(2, -1)
        r, z = edit("r", r), edit("z", z)
        n = edit("n", torch.addcmul(a[..., 2 * H :], r, b[..., 2 * H :]).tanh_())  # reads the edited r
        h = edit("h", torch.addcmul(n, z, state - n))
        new: LayerState = h
        nodes = {"h": h, "r": r, "z": z, "n": n}
    elif cell == "lstm":
        i, f, g, o = (edit(kind, v) for kind, v in zip("ifgo", lstm_gates(a if b is None else a.add_(b))))
        c = edit("c", torch.addcmul(f * state[1], i, g))
        h = edit("h", o * c.tanh())
        new, nodes = (h, c), {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}
    else:
        h = edit("h", (a if b is None else a.add_(b)).tanh_())
        new, nodes = h, {"h": h}
    if seen is not None:
        seen.update(nodes)
    return new


# -- a whole sequence (training with dropped weights or locked dropout) ------------------


def run_stack(cell: str, x: Tensor, state: LayerState | None, weights: Sequence[Weights], dropout: float = 0.0,
              train: bool = False, between: Callable[[Tensor], Tensor] | None = None,
              edits: Sequence[Edit | None] | None = None) -> tuple[Tensor, LayerState]:
    """L stacked layers over x [B, T, E] with the fused kernel, on weights passed as tensors.

    The fused module's own call, with ``weights`` (one :data:`Weights` per layer) in place
    of its parameters: the same kernel and numbers, but the weights may be functions of the
    parameters (weight drop), through which gradients reach them. ``state`` is [L, B, H]
    (LSTM: (h, c)), or None for zeros; with layers of different sizes H_l (a :class:`LayerStack`)
    it is [L, B, max H_l], layer l using its first H_l units. Returns out [B, T, H_last] and
    the state after the last step.

    ``between`` None: one kernel call for all layers, with per-step dropout of p=``dropout``
    between layers when ``train`` (the module's own). Else layer by layer, each layer's
    output going through ``between`` (e.g. locked dropout) before the next layer reads it.

    ``edits`` (one :data:`Edit` or None per layer; :mod:`lmgen.intervene`): layer by layer,
    a layer with an edit step by step (:func:`run_edited`), the others one fused call each.

    >>> rnn = build("lstm", input_size=4, hidden=3, layers=2)
    >>> x = torch.randn(2, 5, 4)
    >>> out, _ = run_stack("lstm", x, None, [layer_weights(rnn, k) for k in range(2)])
    >>> torch.equal(out, rnn(x)[0])
    True
    """
    L, sizes = len(weights), [w[1].shape[1] for w in weights]
    width = max(sizes)
    if state is None:  # as the fused module does: zeros in the input's dtype
        h = x.new_zeros(L, x.shape[0], width)
        state = (h, h.clone()) if cell == "lstm" else h
    if between is None and edits is None and len(set(sizes)) == 1:
        return _run_layers(cell, x, state, weights, dropout, train)
    if between is None and dropout > 0.0 and train:  # the fused module's per-step dropout between layers
        def between(h: Tensor) -> Tensor:
            return torch.nn.functional.dropout(h, dropout, True)

    def part(s: Tensor, layer: int) -> Tensor:  # layer l's [1, B, H_l] of a padded [L, B, width] state
        return s[layer : layer + 1, :, : sizes[layer]].contiguous()

    def pad(s: Tensor) -> Tensor:
        return torch.nn.functional.pad(s, (0, width - s.shape[-1]))

    states = []
    for layer, layer_w in enumerate(weights):
        if layer > 0 and between is not None:
            x = between(x)
        layer_state = tuple(part(s, layer) for s in state) if cell == "lstm" else part(state, layer)
        if edits is not None and edits[layer] is not None:
            x, layer_state, _ = run_edited(cell, x, layer_state, layer_w, edits[layer])
        else:
            x, layer_state = _run_layers(cell, x, layer_state, [layer_w], 0.0, train)
        states.append(layer_state)
    if cell == "lstm":
        return x, (torch.cat([pad(s[0]) for s in states]), torch.cat([pad(s[1]) for s in states]))
    return x, torch.cat([pad(s) for s in states])


def _run_layers(cell: str, x: Tensor, state: LayerState, weights: Sequence[Weights], dropout: float,
                train: bool) -> tuple[Tensor, LayerState]:
    """One call of ATen's whole-sequence kernel (batch first, one direction, with biases)."""
    flat = [w for layer in weights for w in layer]
    if cell == "lstm":
        out, h, c = _ATEN_SEQUENCES[cell](x, state, flat, True, len(weights), dropout, train, False, True)
        return out, (h, c)
    out, h = _ATEN_SEQUENCES[cell](x, state, flat, True, len(weights), dropout, train, False, True)
    return out, h


def run_edited(cell: str, x: Tensor, state: LayerState, weights: Weights, edit: Edit,
               record: bool = False) -> tuple[Tensor, LayerState, dict[str, Tensor] | None]:
    """One layer over x [B, T, E] a step at a time, ``edit`` applied inside every step
    (:func:`update_edited`): a fused kernel cannot set a unit that its own next step reads.

    ``state`` is [1, B, H] (LSTM: (h, c)), as a one-layer fused call takes it. Returns the
    output [B, T, H], the state after the last step, and with ``record`` every kind of
    :data:`KINDS` at every step, [B, T, H] each (else None). Differentiable.
    """
    w_ih, w_hh, b_ih, b_hh = weights
    b_in, b_rec = split_bias(cell, b_ih, b_hh)
    inputs = torch.nn.functional.linear(x, w_ih, b_in)  # [B, T, G*H]: every step's input projection at once
    s: LayerState = (state[0][0], state[1][0]) if cell == "lstm" else state[0]  # [B, H]
    outs: list[Tensor] = []
    seen: dict[str, list[Tensor]] = {kind: [] for kind in KINDS[cell]} if record else {}
    step: dict[str, Tensor] | None = {} if record else None
    for t in range(x.shape[1]):
        h = output(cell, s)
        if b_rec is None:  # LSTM, RNN: one summed projection
            a, b = torch.addmm(inputs[:, t], h, w_hh.t()), None
        else:  # GRU: update() overwrites a; a fresh copy keeps every step's input intact for autograd
            a, b = inputs[:, t].clone(), torch.nn.functional.linear(h, w_hh, b_rec)
        s = update_edited(cell, a, b, s, edit, step)
        outs.append(output(cell, s))
        for kind, values in seen.items():
            values.append(step[kind])  # type: ignore[index]
    new_state: LayerState = (s[0][None], s[1][None]) if cell == "lstm" else s[None]
    recorded = {kind: torch.stack(values, 1) for kind, values in seen.items()} if record else None
    return torch.stack(outs, 1), new_state, recorded


# -- a whole sequence (trace) ------------------------------------------------------------


def run_layer(rnn: nn.Module, layer: int, x: Tensor) -> Tensor:
    """Layer ``layer`` of a fused module over x [T, E] from the zero state -> h [T, H]."""
    out, _ = single_layer(rnn, layer)(x[None])
    return out[0]


def sequence_activations(cell: str, x: Tensor, h: Tensor, weights: Weights,
                         start: LayerState | None = None) -> dict[str, Tensor]:
    """Every kind of :data:`KINDS` at every step of a layer.

    x [T, E] is the layer's input and h [T, H] its output (from the fused kernel). The
    gates depend only on (x_t, h_{t-1}), so two matrix products give them for all t at
    once; only the LSTM cell state needs a scan, and it is elementwise. ``start`` is the
    layer's state before step 0 (LSTM (h, c), each [H]; else h [H]), None for zeros: a
    long text is traced in chunks, each starting where the last one stopped.
    """
    if cell == "rnn":
        return {"h": h}
    w_ih, w_hh, b_ih, b_hh = weights
    h0 = h.new_zeros(h.shape[1]) if start is None else output(cell, start)
    h_prev = torch.cat([h0[None], h[:-1]])  # [T, H]: the state each step reads
    if cell == "lstm":
        i, f, g, o = lstm_gates(x @ w_ih.T + b_ih + h_prev @ w_hh.T + b_hh)  # [T, 4H]
        c = _linear_scan(f, i * g, h.new_zeros(h.shape[1]) if start is None else start[1])
        return {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}
    r, z, n = gru_gates(x @ w_ih.T + b_ih, h_prev @ w_hh.T + b_hh)  # [T, 3H] each
    return {"h": h, "r": r, "z": z, "n": n}


def edited_activations(cell: str, x: Tensor, state: LayerState | None, weights: Weights,
                       edit: Edit) -> tuple[Tensor, LayerState, dict[str, Tensor]]:
    """A layer with an intervention over x [T, E], stepped by :func:`run_edited`, for a trace.

    ``state``: a one-layer fused state ([1, 1, H], LSTM (h, c)), None for zeros. Returns the
    output [1, T, H] and the state after (both as the fused layer returns them) and every
    kind of :data:`KINDS` [T, H] (:func:`sequence_activations`' dict), edited units as set.
    """
    if state is None:
        zeros = x.new_zeros(1, 1, weights[1].shape[1])
        state = (zeros, zeros.clone()) if cell == "lstm" else zeros
    out, state, acts = run_edited(cell, x[None], state, weights, edit, record=True)
    assert acts is not None
    return out, state, {kind: values[0] for kind, values in acts.items()}


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
