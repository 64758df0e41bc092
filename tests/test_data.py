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
