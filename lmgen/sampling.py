"""Generation: prime the state with the prompt, then feed each chosen token back.

Pure functions over (model, state, logits); randomness only from an injected
``torch.Generator``. One step of work per new token: the prefix is never re-run.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .errors import ConfigError
from .model import RNNLM
from .tokenizer import Tokenizer


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature} (use --greedy for the most likely token)")


@torch.no_grad()
def prime(model: RNNLM, tokenizer: Tokenizer, prompt: str):
    """Run ``[END] + prompt`` through the model: the last logits [V] and the state after it.

    Starting with ``[END]`` puts the model where every training document starts.
    """
    device = next(model.parameters()).device
    ids = [tokenizer.end_id] + tokenizer.encode(prompt)
    tokens = torch.tensor([ids], dtype=torch.long, device=device)  # [1, T]
    logits, state = model(tokens)
    return logits[0, -1], state


@torch.no_grad()
def sample_ids(
    model: RNNLM,
    tokenizer: Tokenizer,
    prompt: str = "",
    *,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield sampled token ids one by one until ``[END]`` (not yielded) or ``max_new_tokens``."""
    check_temperature(temperature)
    was_training = model.training
    model.eval()
    try:
        logits, state = prime(model, tokenizer, prompt)
        for _ in range(max_new_tokens):
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            if token == tokenizer.end_id:
                return
            yield token
            step = torch.tensor([[token]], dtype=torch.long, device=logits.device)
            out, state = model(step, state)
            logits = out[0, -1]
    finally:
        model.train(was_training)


def stream_text(tokenizer: Tokenizer, ids: Iterator[int]) -> Iterator[str]:
    """Turn a stream of ids into a stream of text pieces whose concatenation is ``decode(ids)``.

    Decoding the whole prefix each time and emitting the new suffix is exact for every
    tokenizer (word spacing, SentencePiece merges); decoding is cheap next to the model.
    """
    seen: list[int] = []
    emitted = ""
    for token in ids:
        seen.append(token)
        text = tokenizer.decode(seen)
        if text.startswith(emitted):
            piece, emitted = text[len(emitted):], text
            if piece:
                yield piece
    text = tokenizer.decode(seen)
    if text != emitted and text.startswith(emitted):
        yield text[len(emitted):]
