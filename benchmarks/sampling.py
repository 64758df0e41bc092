"""Generation speed of a 2x512 char-LSTM on CPU (random weights, vocabulary 100).

Prints tokens/s for one greedy stream, one top-p stream, 64 samples in one batch and
beam search of width 5, and the ratios against the aims of issue 5:

    single stream >= 3,000 tok/s;  64 batched >= 30x single;  beam-5 step <= 2.5x greedy step

Run on a quiet machine (timings on a shared one are noisy):

    OMP_NUM_THREADS=1 python benchmarks/sampling.py            # one thread
    python benchmarks/sampling.py --threads 2 --tokens 1000
"""

from __future__ import annotations

import argparse
import time

import torch

from lmgen.config import ModelConfig
from lmgen.model import RNNLM
from lmgen.sampling import GenerationConfig, beam_search, generate, prime
from lmgen.tokenizer import build_tokenizer


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per stream")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = build_tokenizer("char", ["".join(chr(32 + i) for i in range(98))])  # 98 + [END], <unk> = 100
    model = RNNLM(ModelConfig(vocab_size=tok.vocab_size, embed=64, hidden=512, layers=2)).to(args.device).eval()
    N = args.tokens
    # min_new_tokens = N bars [END], so every run makes exactly N tokens per stream
    greedy = GenerationConfig(do_sample=False, max_new_tokens=N, min_new_tokens=N)
    top_p = GenerationConfig(temperature=0.8, top_p=0.95, max_new_tokens=N, min_new_tokens=N)
    batch = top_p.replace(num_return_sequences=64)
    beam = GenerationConfig(num_beams=5, do_sample=False, max_new_tokens=N, min_new_tokens=N)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ctx_time = timed(lambda: prime(model, tok, "hello"), args.repeats)
    t_greedy = timed(lambda: generate(model, tok, "", greedy), args.repeats)
    t_top_p = timed(lambda: generate(model, tok, "", top_p, generator=g()), args.repeats)
    t_batch = timed(lambda: generate(model, tok, "", batch, generator=g()), args.repeats)
    t_beam = timed(lambda: beam_search(model, tok, "", beam), args.repeats)
    single, nucleus = N / t_greedy, N / t_top_p
    batched = 64 * N / t_batch
    beam_ratio = t_beam / t_greedy
    print(f"2x{512} LSTM, embed 64, V={tok.vocab_size}, {N} tokens per stream, device {args.device}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats}; priming 6 tokens: {ctx_time * 1e3:.1f} ms")
    print(f"{'case':<28}{'tok/s':>10}{'ms/step':>10}   aim")
    print(f"{'greedy, 1 stream':<28}{single:>10,.0f}{t_greedy / N * 1e3:>10.3f}   >= 3,000 tok/s: "
          f"{'met' if single >= 3000 else 'NOT met'} ({single / 3000:.2f}x)")
    print(f"{'top-p 0.95, 1 stream':<28}{nucleus:>10,.0f}{t_top_p / N * 1e3:>10.3f}   >= 3,000 tok/s: "
          f"{'met' if nucleus >= 3000 else 'NOT met'} ({nucleus / 3000:.2f}x)")
    print(f"{'top-p 0.95, 64 batched':<28}{batched:>10,.0f}{t_batch / N * 1e3:>10.3f}   >= 30x single: "
          f"{batched / nucleus:.1f}x ({'met' if batched >= 30 * nucleus else 'NOT met'})")
    print(f"{'beam width 5':<28}{N / t_beam:>10,.0f}{t_beam / N * 1e3:>10.3f}   step <= 2.5x greedy: "
          f"{beam_ratio:.2f}x ({'met' if beam_ratio <= 2.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
