"""Interventions: set, ablate or scale single units while the model runs.

``intervene(model, {unit: action})`` is a context manager; inside it every forward path
of lmgen applies the actions: the model's forward (training, evaluation, priming a
prompt), the sampling step engines (float32 and float16), :func:`lmgen.activations.trace`
and beam search. Units are named as ``trace`` names them: ``L0.c[43]`` (layer 0, cell
state, unit 43), ``L1.h[7]``, gates ``L0.f[3]`` (LSTM i f g o, GRU r z n)::

    action          the unit's value at every step becomes
    2.5             2.5 (a clamp; any number)
    "zero"          0 (an ablation)
    "mean"          its mean, from ``means=`` (a Trace of some text, or {unit: value})
    scale(0.5)      0.5 times what the model computed (also the string "*0.5")
    fn              fn(values), values [B] (one per stream): any tensor function

What it means: each step's nodes are computed in order (gates, then c, then h) and a set
unit is replaced as soon as it is computed, so everything after it in the same step and
in the next step reads the set value: a clamped c_t gives h_t = o_t tanh(c_t) and
c_{t+1} = f c_t + i g; a clamped h_t is what the next layer, the decoder and step t+1
read. The maths is :func:`lmgen.cells.update_edited`. A layer with an intervention runs a
step at a time (a fused kernel cannot set a unit that its own next step reads); layers
without one keep their fused kernel. With no intervention, nothing changes: every path
runs the code it ran before this module existed (tested bit for bit).

    >>> with intervene(model, {"L0.c[43]": 2.5, "L0.h[5]": "zero"}):        # doctest: +SKIP
    ...     text = generate(model, tok, "See ", config)[0].text

Interventions nest: an inner one adds its units to the outer's (and wins on a unit both
set). See docs/interventions.md.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

import torch
from torch import Tensor

from . import cells
from .errors import ConfigError

_UNIT_RE = re.compile(r"L(\d+)\.([a-z])\[(\d+)\]")
_NUMBER_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True)
class Scale:
    """The action "multiply the unit by ``factor``" (``scale(0.5)``; a bare number clamps)."""

    factor: float


def scale(factor: float) -> Scale:
    """The action that multiplies a unit by ``factor`` at every step."""
    return Scale(float(factor))


Action = Union[float, int, str, Scale, Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class Edit:
    """One unit and what happens to it: ``how`` is "clamp" (``value`` a number), "scale"
    (``value`` the factor) or "fn" (``value`` a callable); ``label`` says where a clamp's
    value came from ("zero", "mean")."""

    layer: int
    kind: str
    index: int
    how: str
    value: Any
    label: str = ""

    @property
    def unit(self) -> str:
        return f"L{self.layer}.{self.kind}[{self.index}]"

    def __str__(self) -> str:
        if self.how == "scale":
            return f"{self.unit} x {self.value:g}"
        if self.how == "fn":
            return f"{self.unit} = {getattr(self.value, '__name__', 'fn')}(...)"
        return f"{self.unit} = {self.value:g}" + (f" ({self.label})" if self.label else "")


def parse_unit(unit: Any) -> tuple[int, str, int]:
    """``"L0.c[43]"`` (or a :class:`lmgen.activations.Unit`) -> (layer, kind, index).

    >>> parse_unit("L1.h[7]")
    (1, 'h', 7)
    """
    if all(hasattr(unit, a) for a in ("layer", "kind", "index")):
        return int(unit.layer), str(unit.kind), int(unit.index)
    if isinstance(unit, tuple) and len(unit) == 3:
        return int(unit[0]), str(unit[1]), int(unit[2])
    m = _UNIT_RE.fullmatch(str(unit).strip())
    if m is None:
        raise ConfigError(f"cannot read the unit {unit!r}: write it as trace names units, e.g. L0.c[43] "
                          "(layer 0, kind c, unit 43) or L1.h[7]")
    return int(m.group(1)), m.group(2), int(m.group(3))


def parse_action(text: str) -> Action:
    """The text after ``=`` in ``--clamp UNIT=VALUE``: a number, ``zero``, ``mean`` or ``*S`` (scale).

    >>> parse_action("2.5"), parse_action("*0.5"), parse_action("zero")
    (2.5, Scale(factor=0.5), 'zero')
    """
    value = text.strip()
    if value.lower() in ("zero", "mean"):
        return value.lower()
    if value[:1] in ("*", "x") and _NUMBER_RE.fullmatch(value[1:].strip()):
        return Scale(float(value[1:]))
    if _NUMBER_RE.fullmatch(value):
        return float(value)
    raise ConfigError(f"cannot read the value {text!r}: give a number (2.5), zero, or *S to scale by S (*0.5)")


def parse_assignment(text: str) -> tuple[str, Action]:
    """``"L0.c[43]=2.5"`` -> ("L0.c[43]", 2.5): what ``--clamp`` and ``:clamp`` take."""
    unit, eq, value = text.partition("=")
    if not eq or not value.strip():
        raise ConfigError(f"cannot read {text!r}: write UNIT=VALUE, e.g. L0.c[43]=2.5")
    parse_unit(unit)
    return unit.strip(), parse_action(value)


def check_unit(model: Any, unit: Any) -> tuple[int, str, int]:
    """(layer, kind, index) of ``unit`` if ``model`` has it, else a ConfigError that says what exists."""
    layer, kind, index = parse_unit(unit)
    cell = getattr(getattr(model, "config", None), "cell", None)
    rnn = getattr(model, "rnn", None)
    if cell not in cells.KINDS or not cells.is_stack(rnn):
        raise ConfigError(f"interventions need an LSTM, GRU or RNN model, not a {cell or type(model).__name__} model")
    sizes = cells.layer_sizes(rnn)
    name = f"L{layer}.{kind}[{index}]"
    if not 0 <= layer < len(sizes):
        raise ConfigError(f"no unit {name}: layer {layer} is out of range; this model has layers 0..{len(sizes) - 1}")
    if kind not in cells.KINDS[cell]:
        raise ConfigError(f"no unit {name}: a {cell} layer has no kind {kind!r}; "
                          f"choose one of {', '.join(cells.KINDS[cell])}")
    if not 0 <= index < sizes[layer]:
        raise ConfigError(f"no unit {name}: index {index} is out of range; layer {layer} has units "
                          f"0..{sizes[layer] - 1}")
    return layer, kind, index


def resolve(model: Any, spec: Mapping[Any, Action] | Iterable[Edit], means: Any = None) -> list[Edit]:
    """The checked :class:`Edit` list of ``spec`` ({unit: action}, or Edits) for ``model``.

    ``means``: where ``"mean"`` takes a unit's mean, a :class:`lmgen.activations.Trace`
    (the mean over its tokens) or a mapping {unit: value}.
    """
    if not isinstance(spec, Mapping):
        edits = list(spec)
        for e in edits:
            check_unit(model, (e.layer, e.kind, e.index))
        return edits
    out: dict[tuple[int, str, int], Edit] = {}
    for unit, action in spec.items():
        key = check_unit(model, unit)
        if isinstance(action, str) and action.strip().lower() not in ("zero", "mean"):
            action = parse_action(action)
        if isinstance(action, str):
            label = action.strip().lower()
            value = 0.0 if label == "zero" else _mean(means, key)
            out[key] = Edit(*key, "clamp", value, label)
        elif isinstance(action, Scale):
            out[key] = Edit(*key, "scale", action.factor)
        elif isinstance(action, (int, float)) and not isinstance(action, bool):
            out[key] = Edit(*key, "clamp", float(action))
        elif callable(action):
            out[key] = Edit(*key, "fn", action)
        else:
            raise ConfigError(f"cannot apply {action!r} to {Edit(*key, 'clamp', 0.0).unit}: give a number (clamp), "
                              "'zero', 'mean', scale(S) or a function of the unit's values")
    return list(out.values())


def _mean(means: Any, key: tuple[int, str, int]) -> float:
    layer, kind, index = key
    name = f"L{layer}.{kind}[{index}]"
    if means is None:
        raise ConfigError(f"{name}: 'mean' needs the unit's mean value: pass means=trace(model, tok, text) "
                          "or means={unit: value}")
    if hasattr(means, "layers"):  # a Trace: the mean over its tokens
        try:
            return float(means.layers[layer][kind][:, index].astype("float64").mean())
        except (IndexError, KeyError):
            raise ConfigError(f"{name}: the trace given as means has no such unit "
                              f"(traced with kinds={tuple(means.layers[0])}?)") from None
    for unit, value in means.items():
        if parse_unit(unit) == key:
            return float(value)
    raise ConfigError(f"{name}: 'mean' needs its value in means=, which lacks it")


# -- applying edits to tensors ---------------------------------------------------------------


class _KindEdit:
    """The edits of one kind of one layer, applied to values [..., H] in two operations."""

    def __init__(self, edits: list[Edit]):
        self.index = [e.index for e in edits]
        self.clamped = [e.how == "clamp" for e in edits]
        self.values = [float(e.value) if e.how == "clamp" else 0.0 for e in edits]
        self.factors = [float(e.value) if e.how == "scale" else 1.0 for e in edits]
        self.fns = [(k, e.value) for k, e in enumerate(edits) if e.how == "fn"]
        self._tensors: dict[tuple, tuple[Tensor, ...]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        tensors = self._tensors.get(key)
        if tensors is None:  # built once per device and dtype
            tensors = (torch.tensor(self.index, device=x.device), torch.tensor(self.clamped, device=x.device),
                       torch.tensor(self.values, dtype=x.dtype, device=x.device),
                       torch.tensor(self.factors, dtype=x.dtype, device=x.device))
            self._tensors[key] = tensors
        index, clamped, values, factors = tensors
        cols = x.index_select(-1, index)  # [..., n]
        new = torch.where(clamped, values, cols * factors)  # a clamp is exactly its value
        for k, fn in self.fns:
            new[..., k] = fn(cols[..., k])
        return x.index_copy(-1, index, new)  # out of place: autograd keeps its saved tensors


class LayerEdit:
    """The :data:`lmgen.cells.Edit` of one layer: ``edit(kind, values)`` -> the values every later node reads."""

    def __init__(self, edits: list[Edit]):
        kinds = sorted({e.kind for e in edits})
        self.kinds = {kind: _KindEdit([e for e in edits if e.kind == kind]) for kind in kinds}

    def __call__(self, kind: str, x: Tensor) -> Tensor:
        edit = self.kinds.get(kind)
        return x if edit is None else edit(x)


class Intervention:
    """The edits in force on a model: ``edits`` (:class:`Edit` list) and ``layers``, one
    :class:`LayerEdit` or None per layer (what the forward paths read)."""

    def __init__(self, edits: list[Edit], num_layers: int):
        self.edits = edits
        self.layers: list[Any] = [None] * num_layers
        for layer in sorted({e.layer for e in edits}):
            self.layers[layer] = LayerEdit([e for e in edits if e.layer == layer])

    def __str__(self) -> str:
        return ", ".join(map(str, self.edits)) or "none"

    def __repr__(self) -> str:
        return f"Intervention({self})"


# model -> the Intervention in force; weak, so a model is freed as usual
_ACTIVE: "weakref.WeakKeyDictionary[Any, Intervention]" = weakref.WeakKeyDictionary()


def active(model: Any) -> list[Any] | None:
    """One :data:`lmgen.cells.Edit` (or None) per layer of ``model`` while an intervention is
    in force on it, else None: the one question every forward path asks."""
    found = _ACTIVE.get(model) if _ACTIVE else None
    return found.layers if found is not None else None


def current(model: Any) -> Intervention | None:
    """The :class:`Intervention` in force on ``model``, or None."""
    return _ACTIVE.get(model)


@contextlib.contextmanager
def install(model: Any, layers: list[Any], edits: list[Edit] | None = None) -> Iterator[Intervention]:
    """Put per-layer edit callables (one per layer, None where a layer is untouched) in force
    on ``model``: the low-level form of :func:`intervene` (e.g. a different unit per batch row)."""
    previous = _ACTIVE.get(model)
    found = Intervention(edits or [], len(layers))
    found.layers = list(layers)
    _ACTIVE[model] = found
    try:
        yield found
    finally:
        if previous is None:
            _ACTIVE.pop(model, None)
        else:
            _ACTIVE[model] = previous


@contextlib.contextmanager
def intervene(model: Any, spec: Mapping[Any, Action] | Iterable[Edit] = (), *,
              means: Any = None) -> Iterator[Intervention | None]:
    """Apply ``spec`` ({unit: action}; see the module docstring) in every forward path of
    ``model`` inside the ``with`` block; yields the :class:`Intervention` (None for an empty spec).

    ``means``: for ``"mean"``, a :class:`lmgen.activations.Trace` (each unit's mean over
    its tokens) or {unit: value}. Bad units raise a ConfigError naming what exists.

    >>> with intervene(model, {"L0.c[43]": "zero"}):                       # doctest: +SKIP
    ...     tr = trace(model, tok, text)                                  # tr.unit(0, "c", 43) is all 0
    """
    edits = resolve(model, spec, means)
    if not edits:  # nothing to do: every path stays exactly as it is
        yield _ACTIVE.get(model)
        return
    previous = _ACTIVE.get(model)
    if previous is not None:  # nested: the outer edits stay, the inner win on a shared unit
        mine = {(e.layer, e.kind, e.index) for e in edits}
        edits = [e for e in previous.edits if (e.layer, e.kind, e.index) not in mine] + edits
    with install(model, Intervention(edits, model.rnn.num_layers).layers, edits) as found:
        yield found


# -- many ablations at once (lmgen.probe.causal_effect) ---------------------------------------


class _RowEdit:
    """Row r of the batch has its own unit of ``kind`` set: values [R, H] where mask [R, H]."""

    def __init__(self, kind: str, mask: Tensor, values: Tensor):
        self.kind, self.mask, self.values = kind, mask, values

    def __call__(self, kind: str, x: Tensor) -> Tensor:
        return torch.where(self.mask, self.values, x) if kind == self.kind else x


@torch.no_grad()
def ablation_losses(model: Any, ids: Any, end_id: int, layer: int, kind: str,
                    settings: list[tuple[int, float]], rows: int = 64, window: int = 512) -> tuple[Any, Any]:
    """The loss of every token of ``ids`` intact, float64 [T] (nats), and its rise under
    each of ``settings`` (a unit index of this layer and kind, and the value it is set to),
    [len(settings), T].

    The text is read by a batch of rows at once, each row with its own unit set (one
    forward pass for ``rows - 1`` settings); every batch also carries an intact row, and
    each rise is against it: numbers from the same kernels. ``[END]`` comes first, as every
    document starts; windows of ``window`` tokens carry the state.
    """
    import numpy as np

    check_unit(model, (layer, kind, 0))
    assert rows >= 2, "a batch holds the intact row and at least one setting"
    device = next(model.parameters()).device
    H = cells.layer_sizes(model.rnn)[layer]
    inputs = torch.as_tensor(np.concatenate([[end_id], ids[:-1]]), dtype=torch.long, device=device)
    targets = torch.as_tensor(ids, dtype=torch.long, device=device)
    T = len(ids)
    rises = np.empty((len(settings), T))
    intact = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, max(len(settings), 1), rows - 1):
            group = settings[start : start + rows - 1]
            mask = torch.zeros(1 + len(group), H, dtype=torch.bool, device=device)
            values = torch.zeros(1 + len(group), H, device=device)
            for r, (index, value) in enumerate(group, 1):
                mask[r, index], values[r, index] = True, value
            layers: list[Any] = [None] * model.rnn.num_layers
            layers[layer] = _RowEdit(kind, mask, values)
            losses, state = [], None
            with install(model, layers):
                for a in range(0, T, window):
                    x = inputs[a : a + window].expand(len(mask), -1)  # [R, w]: the same text in every row
                    logits, state = model(x, state)
                    logp = torch.log_softmax(logits.double(), dim=-1)  # [R, w, V]
                    losses.append(-logp.gather(2, targets[a : a + window].expand(len(mask), -1)[..., None])[..., 0])
            nll = torch.cat(losses, 1).cpu().numpy()  # [R, T]
            intact = nll[0] if intact is None else intact
            rises[start : start + len(group)] = nll[1:] - nll[0]
    finally:
        model.train(was_training)
    return intact, rises
