"""Outputs of every forward path of lmgen on fixed tiny models, for the "no intervention
changes nothing" test (tests/test_intervene.py).

``tests/data/intervene_reference.pt`` holds the models' weights and these outputs as
computed *before* interventions existed (written by ``python tests/intervene_reference.py``
on that tree). The test recomputes them with today's code and compares bit for bit
(``torch.equal``) on the platform that wrote them; floating-point kernels differ between
CPUs, so elsewhere it compares to 1e-6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from lmgen.config import ModelConfig
from lmgen.generation import GenerationConfig
from lmgen.model import RNNLM
from lmgen.tokenizer import build_tokenizer

PATH = Path(__file__).resolve().parent / "data" / "intervene_reference.pt"
TEXT = "see http://x.org/a?b=1 and [[link]] now.\nthe cat sat on the mat.\n"
# name -> model config (vocabulary size filled in from the tokenizer)
CONFIGS = {
    "lstm2": dict(cell="lstm", embed=8, hidden=16, layers=2),
    "gru2": dict(cell="gru", embed=8, hidden=16, layers=2),
    "rnn1": dict(cell="rnn", embed=8, hidden=16, layers=1),
    "lstm-sizes": dict(cell="lstm", embed=8, hidden=[12, 8], layers=2),
    "lstm-awd": dict(cell="lstm", embed=8, hidden=16, layers=2, weight_drop=0.3, dropout_hidden=0.2,
                     dropout_output=0.1),
}


def platform() -> str:
    return f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def tokenizer():
    return build_tokenizer("char", [TEXT])


def build(name: str, state: dict | None = None) -> RNNLM:
    """The model ``name``: fresh random weights (seed 0, sharpened), or ``state``'s."""
    tok = tokenizer()
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=tok.vocab_size, **CONFIGS[name])).eval()
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3.0)  # gates away from their linear range
        model.decoder.weight.mul_(10.0)
    if state is not None:
        model.load_state_dict(unpack(*state))
    return model


def outputs(model: RNNLM) -> dict[str, torch.Tensor]:
    """Every path's numbers on ``model``: fused forward (eval and training), both step
    engines, trace, beam search, sampling and evaluation."""
    from lmgen.activations import trace
    from lmgen.evaluate import evaluate_tokens
    from lmgen.sampling import Recurrence, beam_search, generate, half_supported

    tok = tokenizer()
    out: dict[str, torch.Tensor] = {}
    tokens = torch.tensor([tok.encode(TEXT[:12]), tok.encode(TEXT[20:32])])  # [2, 12]
    with torch.no_grad():
        logits, state = model(tokens)
        out["forward"] = logits
        out["forward_state"] = torch.cat([s.flatten() for s in (state if isinstance(state, tuple) else (state,))])
        model.train()
        torch.manual_seed(7)
        out["forward_train"] = model(tokens)[0]
        model.eval()
    for precision in ("float32", "float16") if half_supported() else ("float32",):
        rec = Recurrence(model, precision)
        layers = rec.split(model.init_state(2))
        steps = []
        with torch.no_grad():
            for t in range(tokens.shape[1]):
                step_logits, layers = rec.step(tokens[:, t], layers)
                steps.append(step_logits)
        out[f"step_{precision}"] = torch.stack(steps, 1)
    tr = trace(model, tok, TEXT[:30])
    for layer, acts in enumerate(tr.layers):
        for kind, values in acts.items():
            out[f"trace_L{layer}.{kind}"] = torch.from_numpy(values)
    out["trace_top_probs"] = torch.from_numpy(tr.top_probs)
    out["trace_next_prob"] = torch.from_numpy(tr.next_prob)
    beams = beam_search(model, tok, "the ", GenerationConfig(num_beams=3, do_sample=False, max_new_tokens=12,
                                                              num_return_sequences=3))
    out["beam_ids"] = torch.tensor([i for b in beams for i in b.ids + [-1]])
    out["beam_scores"] = torch.tensor([b.score for b in beams], dtype=torch.float64)
    for precision in ("float32", "float16") if half_supported() else ("float32",):
        samples = generate(model, tok, "see ", GenerationConfig(max_new_tokens=30, num_return_sequences=3,
                                                                 precision=precision),
                           generator=torch.Generator().manual_seed(3))
        out[f"sample_{precision}"] = torch.tensor([i for s in samples for i in s.ids + [-1]])
    ids = np.array(tok.encode(TEXT * 3))
    for batch in (1, 3):
        out[f"eval_nll_b{batch}"] = torch.tensor(evaluate_tokens(model, ids, batch=batch, bptt=16).nll,
                                                 dtype=torch.float64)
    return out


def pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[tuple[str, tuple, str]]]:
    """Named tensors -> one flat tensor per dtype and (name, shape, dtype) of each part: a
    few hundred small tensors saved one by one take ~1 KB each of zip overhead."""
    index = [(name, tuple(t.shape), str(t.dtype).replace("torch.", "")) for name, t in tensors.items()]
    flats = {}
    for dtype in {d for _, _, d in index}:
        flats[dtype] = torch.cat([t.detach().flatten() for t in tensors.values() if t.dtype == getattr(torch, dtype)])
    return flats, index


def unpack(flats: dict[str, torch.Tensor], index: list[tuple[str, tuple, str]]) -> dict[str, torch.Tensor]:
    out, offsets = {}, dict.fromkeys(flats, 0)
    for name, shape, dtype in index:
        n = int(np.prod(shape)) if shape else 1
        out[name] = flats[dtype][offsets[dtype] : offsets[dtype] + n].reshape(shape)
        offsets[dtype] += n
    return out


def write() -> None:
    data = {"platform": platform(), "models": {}}
    for name in CONFIGS:
        model = build(name)
        data["models"][name] = {"state": pack(model.state_dict()), "outputs": pack(outputs(model))}
    PATH.parent.mkdir(exist_ok=True)
    torch.save(data, PATH)
    print(f"wrote {PATH} ({PATH.stat().st_size:,} bytes) on {data['platform']}")


if __name__ == "__main__":
    sys.exit(write())
