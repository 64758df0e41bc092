"""Token files and the stream batcher."""

import numpy as np
import pytest
import torch

from lmgen.data import StreamBatcher, token_dtype
from lmgen.errors import ConfigError, TokenizerError


def test_batcher_streams_are_contiguous_and_windows_continue():
    tokens = np.arange(103, dtype=np.uint16)
    b = StreamBatcher(tokens, batch=4, bptt=7)
    L = 103 // 4
    xs, ys = zip(*b)
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    # Stream s is tokens[s*L : (s+1)*L]; inputs are all but its last token, targets all but its first.
    for s in range(4):
        stream = torch.arange(s * L, (s + 1) * L)
        assert torch.equal(x[s], stream[:-1])
        assert torch.equal(y[s], stream[1:])
    assert all(w.shape[1] <= 7 for w in xs)
    assert b.tokens_per_pass == y.numel()
    assert x.dtype == torch.int64


def test_batcher_refuses_a_split_too_small_and_says_what_to_do():
    with pytest.raises(ConfigError, match=r"--batch 5 or less"):
        StreamBatcher(np.arange(10), batch=8, bptt=4)


def test_token_dtype_grows_with_the_vocabulary():
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    with pytest.raises(TokenizerError, match="does not fit"):
        token_dtype(2**33)


def test_span_takes_windows_at_any_token_offset_and_window_k_is_span_k_times_t():
    tokens = np.arange(103, dtype=np.uint16)
    b = StreamBatcher(tokens, batch=4, bptt=7)
    L = 103 // 4
    for k in range(b.num_windows):
        x, y = b.window(k)
        xs, ys = b.span(k * 7, 7)
        assert torch.equal(x, xs) and torch.equal(y, ys)
    x, y = b.span(3, 11)  # [B, 11] from token 3 of every stream
    assert torch.equal(x[2], torch.arange(2 * L + 3, 2 * L + 14)) and torch.equal(y, x + 1)
    x, _ = b.span(L - 4, 50)  # cut short where the streams end (the last target is token L-1)
    assert x.shape == (4, 3)
