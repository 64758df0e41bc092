"""The recurrent language model: embedding -> L recurrent layers -> dropout -> decoder.

Training may regularise it AWD-LSTM's way (:mod:`lmgen.regularize`): embedding dropout,
locked dropout at the input, between layers and before the decoder, and weight drop on
W_hh; evaluation and generation always run the plain fused layers on the full weights.

The hidden state is explicit: ``logits, state = model(tokens, state)``. Truncated BPTT
carries ``state`` from one window to the next and cuts the graph with
:func:`detach_state`; generation feeds one token at a time with the same call. The
recurrent layers (weight layout, gate order) are :mod:`lmgen.cells`'. Layers may differ in
size (``--hidden 1150,1150,400``); the state is then [L, B, max H_l], layer l using its
first H_l units (:class:`lmgen.cells.LayerStack`).

The decoder is a linear layer, or with ``--adaptive-softmax`` an
:class:`~lmgen.softmax.AdaptiveDecoder`, whose "logits" are exact log-probabilities.
Training asks for the loss itself (``model(x, state, targets=y)``), so that the adaptive
softmax computes only what the targets need.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cells, regularize
from .config import ModelConfig
from .intervene import active as active_edits
from .softmax import AdaptiveDecoder, decoder_parameters

# LSTM state is (h, c), each [L, B, H]; GRU and tanh-RNN state is h, [L, B, H].
State = Union[Tensor, tuple[Tensor, Tensor]]


class RNNLM(nn.Module):
    """An autoregressive RNN / GRU / LSTM language model.

    >>> model = RNNLM(ModelConfig(vocab_size=10, embed=8, hidden=16))
    >>> logits, state = model(torch.zeros(2, 5, dtype=torch.long))
    >>> logits.shape
    torch.Size([2, 5, 10])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.vocab_size > 0, "vocab_size must be set from the tokenizer"
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed)
        self.drop = nn.Dropout(config.dropout)  # per-step dropout at each place whose locked p is -1
        # Locked dropout between layers needs the layers one by one; the fused module then
        # never drops itself (and evaluates, like every module, without dropout).
        self.locked_between = config.layers > 1 and config.dropout_hidden >= 0.0
        per_step = config.dropout if config.layers > 1 and not self.locked_between else 0.0
        self.rnn = cells.build(config.cell, config.embed, config.sizes, config.layers, dropout=per_step)
        # Training runs the layers functionally when W_hh is dropped or a mask goes between
        # layers; otherwise (and always in evaluation) through the module itself, as before.
        self.functional = config.weight_drop > 0.0 or self.locked_between
        self.decoder = make_decoder(config, config.top)
        if config.tie:
            # Press & Wolf 2017 / Inan et al. 2017: one matrix for input and output words.
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.config.init_range > 0:
            uniform_init(self, self.config.init_range)
            return
        # Embeddings N(0, 1) (PyTorch's default): inputs of unit scale drive the gates from
        # the first step; measured on tinyshakespeare, U(-0.1, 0.1) (word_language_model's
        # choice) cost 0.18 nats/char after 200 steps. A tied matrix is also the decoder,
        # whose logits must start small (initial loss ~ ln V), so it keeps U(-0.1, 0.1).
        # Recurrent weights keep PyTorch's U(-1/sqrt(H), 1/sqrt(H)).
        if self.config.tie:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        else:
            nn.init.normal_(self.embedding.weight, 0.0, 1.0)
        _init_decoder(self.decoder, weights=not self.config.tie)
        self.rnn.reset_parameters()
        if self.config.cell == "lstm":
            # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.
            cells.set_forget_bias(self.rnn, 1.0)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """The zero state for ``batch`` streams: where every document stream starts."""
        device = device if device is not None else self.embedding.weight.device
        L, H = self.config.layers, self.config.width
        zeros = torch.zeros(L, batch, H, device=device)
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else zeros

    def forward(self, tokens: Tensor, state: State | None = None, return_outputs: bool = False,
                targets: Tensor | None = None):
        """tokens [B, T] (int64) and state -> logits [B, T, V] and the state after the last step.

        With ``return_outputs``, also ``(raw, dropped)``: the last layer's output [B, T, H]
        before and after the output dropout (``dropped`` is what the decoder reads), for the
        activation penalties AR and TAR (Merity et al. 2018). With ``targets`` [B, T], the
        mean cross-entropy (float32, a scalar) in place of the logits (:func:`decode_loss`).
        """
        cfg = self.config
        if cfg.dropout_embed > 0.0:
            x = regularize.embedding_dropout(self.embedding.weight, tokens, cfg.dropout_embed, self.training)
        else:
            x = self.embedding(tokens)  # [B, T, E]
        x = self._dropout(x, cfg.dropout_input)
        edits = active_edits(self)  # units set by lmgen.intervene.intervene, or None
        if self.functional and self.training:
            out, state = self._run_dropped(x, state, edits)
        elif edits is not None:  # layer by layer, an edited layer a step at a time
            weights = [cells.layer_weights(self.rnn, layer) for layer in range(cfg.layers)]
            out, state = cells.run_stack(cfg.cell, x, state, weights, dropout=self.rnn.dropout, train=self.training,
                                         edits=edits)
        else:
            out, state = self.rnn(x, state)  # out [B, T, H]
        dropped = self._dropout(out, cfg.dropout_output)
        logits = self.decoder(dropped) if targets is None else decode_loss(self.decoder, dropped, targets)
        if return_outputs:
            return logits, state, (out, dropped)
        return logits, state

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        """x [B, T, E or H] through the dropout of one place: per-step ``--dropout`` if p is -1, else locked."""
        return self.drop(x) if p < 0.0 else regularize.locked_dropout(x, p, self.training)

    def _run_dropped(self, x: Tensor, state: State | None, edits: list | None = None) -> tuple[Tensor, State]:
        """The recurrent layers in training, on x [B, T, E], with W_hh dropped and locked dropout between layers.

        The parameters themselves are untouched: each call builds the dropped matrices from them.
        """
        cfg = self.config
        weights = []
        for layer in range(cfg.layers):
            w_ih, w_hh, b_ih, b_hh = cells.layer_weights(self.rnn, layer)
            weights.append((w_ih, regularize.weight_drop(w_hh, cfg.weight_drop, True), b_ih, b_hh))
        between = None
        if self.locked_between:
            def between(h: Tensor) -> Tensor:  # h [B, T, H]
                return regularize.locked_dropout(h, cfg.dropout_hidden, True)
        return cells.run_stack(cfg.cell, x, state, weights, dropout=self.rnn.dropout, train=True, between=between,
                               edits=edits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class WindowLM(nn.Module):
    """Fixed-window feed-forward LM (Bengio et al. 2003): the previous W token embeddings,
    concatenated, through ``layers`` tanh layers of size H, then the decoder.

    Same interface as :class:`RNNLM`; the state is the last W-1 token ids, [W-1, B]
    (batch in dimension 1 like an RNN state, so :func:`select_state` works), initially
    ``[END]`` (id 0): windows of truncated BPTT and generation continue seamlessly.

    >>> model = WindowLM(ModelConfig(cell="window", vocab_size=10, embed=8, hidden=16, window=3))
    >>> logits, state = model(torch.zeros(2, 5, dtype=torch.long))
    >>> logits.shape, state.shape
    (torch.Size([2, 5, 10]), torch.Size([2, 2]))
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.vocab_size > 0, "vocab_size must be set from the tokenizer"
        self.config = config
        W, E, H = config.window, config.embed, config.hidden
        self.embedding = nn.Embedding(config.vocab_size, E)
        self.drop = nn.Dropout(config.dropout)
        sizes = [W * E] + [H] * config.layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.decoder = make_decoder(config, H)
        if config.tie:
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        _init_decoder(self.decoder, weights=not config.tie)
        if config.init_range > 0:
            uniform_init(self, config.init_range)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """W-1 ``[END]`` ids per stream, [W-1, B]: the context every document stream starts with."""
        device = device if device is not None else self.embedding.weight.device
        return torch.zeros(self.config.window - 1, batch, dtype=torch.long, device=device)

    def forward(self, tokens: Tensor, state: Tensor | None = None, return_outputs: bool = False,
                targets: Tensor | None = None):
        """tokens [B, T] and state [W-1, B] -> logits [B, T, V] and the last W-1 ids [W-1, B].

        With ``return_outputs``, also ``(raw, dropped)``: the last hidden layer [B, T, H]
        before and after its dropout, and with ``targets`` the mean cross-entropy in place of
        the logits, as :meth:`RNNLM.forward` gives.
        """
        B, T = tokens.shape
        W = self.config.window
        if state is None:
            state = self.init_state(B, tokens.device)
        seq = torch.cat([state.t(), tokens], dim=1)  # [B, W-1+T]
        windows = seq.unfold(1, W, 1)  # [B, T, W]: position t sees tokens t-W+1 .. t
        x = self.drop(self.embedding(windows).flatten(2))  # [B, T, W*E]
        for layer in self.hidden:
            raw = torch.tanh(layer(x))  # [B, T, H]
            x = self.drop(raw)
        logits = self.decoder(x) if targets is None else decode_loss(self.decoder, x, targets)
        state = seq[:, seq.shape[1] - (W - 1) :].t()
        if return_outputs:
            return logits, state, (raw, x)
        return logits, state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def make_decoder(cfg: ModelConfig, inputs: int) -> nn.Module:
    """The output layer on ``inputs`` features: linear, or the adaptive softmax of ``--adaptive-softmax``."""
    if cfg.adaptive_softmax:
        return AdaptiveDecoder(inputs, cfg.vocab_size, cfg.cutoffs(), cfg.adaptive_div)
    return nn.Linear(inputs, cfg.vocab_size)


def _init_decoder(decoder: nn.Module, weights: bool = True) -> None:
    """Small initial logits (loss ~ ln V at the start): biases 0 and, unless ``weights`` is False
    (a tied matrix, initialised as the embedding), weights U(-0.1, 0.1)."""
    for name, param in decoder.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(param)
        elif weights:
            nn.init.uniform_(param, -0.1, 0.1)


def decode_loss(decoder: nn.Module, h: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the tokens ``targets`` [B, T] after outputs h [B, T, H], in float32.

    A linear decoder computes all logits; an adaptive softmax only the clusters the
    targets fall in (the reason training asks for the loss instead of the logits).
    """
    if isinstance(decoder, AdaptiveDecoder):
        return decoder.loss(h.float(), targets)
    return F.cross_entropy(decoder(h).float().flatten(0, 1), targets.reshape(-1))


def uniform_init(module: nn.Module, r: float) -> None:
    """Every parameter, biases included, from U(-r, r): ``--init-range`` (Zaremba et al. 2014)."""
    for param in module.parameters():
        nn.init.uniform_(param, -r, r)


def build_model(config: ModelConfig) -> nn.Module:
    """The model ``config.cell`` names: :class:`WindowLM` for "window", else :class:`RNNLM`."""
    return WindowLM(config) if config.cell == "window" else RNNLM(config)


def detach_state(state: State) -> State:
    """Cut the graph between windows (truncated BPTT) but keep the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def state_to_tensors(state: State | None) -> dict[str, Tensor]:
    """A state as named tensors (for saving alongside a checkpoint)."""
    if state is None:
        return {}
    if isinstance(state, tuple):
        return {"h": state[0].detach().cpu(), "c": state[1].detach().cpu()}
    return {"h": state.detach().cpu()}


def state_from_tensors(tensors: dict[str, Tensor], device: torch.device | str) -> State | None:
    if not tensors:
        return None
    if "c" in tensors:
        return (tensors["h"].to(device), tensors["c"].to(device))
    return tensors["h"].to(device)


def select_state(state: State, index: Tensor) -> State:
    """Rows ``index`` of the batch dimension of a state (beam search, finished samples)."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


def estimate_parameters(cfg: ModelConfig) -> int:
    """Parameter count of the model ``cfg`` describes, without building it.

    Closed form for the recurrent cells (a meta-device build of ``--layers 10000000``
    would itself take minutes); other models are built on the meta device (nothing allocated).

    >>> estimate_parameters(ModelConfig(vocab_size=10, embed=8, hidden=16, layers=1, tie=False))
    1914
    """
    if cfg.cell not in cells.GATES:
        with torch.device("meta"):
            return build_model(cfg).num_parameters()
    G, V, E, L = len(cells.GATES[cfg.cell]), cfg.vocab_size, cfg.embed, cfg.layers
    # Layer l reads E inputs (l = 0) or H_{l-1}; each gate has W_ih, W_hh, b_ih, b_hh.
    if isinstance(cfg.hidden, list):
        inputs = [E] + cfg.hidden[:-1]
        recurrent = sum(G * H * (inp + H + 2) for inp, H in zip(inputs, cfg.hidden))
    else:
        H = cfg.hidden
        recurrent = G * H * (E + H + 2) + (L - 1) * G * H * (2 * H + 2)
    decoder = V if cfg.tie else decoder_parameters(cfg.top, V, cfg.cutoffs(), cfg.adaptive_div)
    return V * E + recurrent + decoder


def estimate_activation_bytes(cfg: ModelConfig, batch: int, bptt: int) -> int:
    """Bytes one training step of B streams x T tokens allocates on the CPU besides the weights (an estimate).

    The embedding output and its gradient, [B, T, E] twice; logits, softmax and their
    gradient, [B, T, V] three times (an upper bound for the adaptive softmax); and per
    recurrent layer the fused kernel's workspace. On CPU PyTorch runs an LSTM layer through
    oneDNN, whose workspace holds every step's input and states at the width of the layer's
    input or H, whichever is larger: (T+1) x B x (6 max(I, H) + 8 H) floats for a layer of I
    inputs (measured with torch's profiler: 31 GB at once for --embed 10000000, B=2, T=64).
    GRU and tanh-RNN layers keep less; the same bound serves them (with H the widest layer).
    """
    B, T, V, E, H, L = batch, bptt, cfg.vocab_size, cfg.embed, cfg.width, cfg.layers
    if cfg.cell not in cells.GATES:  # the window model: [B, T, W*E] inputs, [B, T, H] per layer
        return 4 * B * T * (2 * cfg.window * E + 2 * L * H + 3 * V)
    workspace = (T + 1) * B * ((6 * max(E, H) + 8 * H) + (L - 1) * 14 * H)
    return 4 * (B * T * (2 * E + 3 * V) + workspace)
