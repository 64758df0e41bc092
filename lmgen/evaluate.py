"""Cross-entropy and perplexity over a whole split, the hidden state carried throughout."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from .data import StreamBatcher
from .model import RNNLM


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU autocast is slower for RNNs)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def stream_loss(
    model: RNNLM,
    tokens: np.ndarray,
    *,
    batch: int = 16,
    bptt: int = 256,
    max_tokens: int = 0,
    amp: bool = True,
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and number of target tokens.

    The split is cut into ``batch`` contiguous streams (as in training), each started
    from the zero state and carried to its end. ``max_tokens`` > 0 evaluates a prefix
    only (a quick estimate during training).
    """
    if max_tokens:
        tokens = tokens[: max_tokens + batch]
    batch = max(1, min(batch, len(tokens) // 2))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for x, y in StreamBatcher(tokens, batch, bptt):
            x, y = x.to(device), y.to(device)
            with autocast_for(device, amp):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    finally:
        model.train(was_training)
    return total, count


def perplexity(nll: float, count: int) -> float:
    return math.exp(min(nll / max(count, 1), 700.0))
