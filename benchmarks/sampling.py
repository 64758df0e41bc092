"""Generation speed of a 2x512 char-LSTM on CPU (random weights, vocabulary 100).

Prints tokens/s for one greedy stream, one top-p stream, 64 samples in one batch and
beam search of width 5, with float32 and float16 step weights (--precision), the ratios
against the aims of issue 5, the cost per token of a continuous cache (--cache N, issue 15;
0: no cache rows), and the machine's matrix-product ceiling for batches:

    single stream >= 3,000 tok/s;  64 batched >= 30x single;  beam-5 step <= 2.5x greedy step

Run on a quiet machine (timings on a shared one are noisy):

    python benchmarks/sampling.py                      # torch's default: every core (2 here)
    OMP_NUM_THREADS=1 python benchmarks/sampling.py    # one thread
"""

from __future__ import annotations

import argparse
import time

import torch

from lmgen.adaptive import CacheConfig
from lmgen.config import ModelConfig
from lmgen.model import RNNLM
from lmgen.sampling import GenerationConfig, beam_search, generate, half_supported, prime
from lmgen.tokenizer import build_tokenizer


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(cases: dict, rounds: int) -> dict:
    """Best time of each case over ``rounds`` rounds that run every case once in turn.

    Spreading a case's runs over the whole benchmark, not back to back, keeps a burst of
    load on a shared machine (seconds long, seen here) from spoiling all of them. A first,
    untimed round packs the float16 weights and warms the caches.
    """
    for fn in cases.values():
        fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per stream")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, every core)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", choices=["float32", "float16"],
                        help="step weights to time (default: both where float16 is supported)")
    parser.add_argument("--cache", type=int, default=500, metavar="N",
                        help="also time one stream with a continuous cache of N pairs (0: not)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = build_tokenizer("char", ["".join(chr(32 + i) for i in range(98))])  # 98 + [END], <unk> = 100
    model = RNNLM(ModelConfig(vocab_size=tok.vocab_size, embed=64, hidden=512, layers=2)).to(args.device).eval()
    N = args.tokens
    print(f"2x512 LSTM, embed 64, V={tok.vocab_size}, {N} tokens per stream, device {args.device}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats} interleaved rounds")
    precisions = args.precision or (["float32", "float16"] if half_supported() and args.device == "cpu"
                                    else ["float32"])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cached = lambda: prime(model, tok, "", cache=CacheConfig(args.cache))  # noqa: E731
    cases = {}
    for precision in precisions:
        # min_new_tokens = N bars [END], so every run makes exactly N tokens per stream
        fixed = GenerationConfig(max_new_tokens=N, min_new_tokens=N, precision=precision)
        greedy = fixed.replace(do_sample=False)
        top_p = fixed.replace(temperature=0.8, top_p=0.95)
        batch = top_p.replace(num_return_sequences=64)
        beam = fixed.replace(num_beams=5, do_sample=False)
        cases[precision, "greedy"] = lambda c=greedy: generate(model, tok, "", c)
        cases[precision, "top-p"] = lambda c=top_p: generate(model, tok, "", c, generator=g())
        cases[precision, "batch"] = lambda c=batch: generate(model, tok, "", c, generator=g())
        cases[precision, "beam"] = lambda c=beam: beam_search(model, tok, "", c)
        if args.cache:  # a context primed with a cache: generation samples the mixture
            cases[precision, "greedy+cache"] = lambda c=greedy: generate(model, tok, cached(), c)
            cases[precision, "top-p+cache"] = lambda c=top_p: generate(model, tok, cached(), c, generator=g())
    t = interleaved(cases, args.repeats)
    print(f"{'precision':<10}{'case':<26}{'tok/s':>10}{'ms/step':>10}   aim")
    for precision in precisions:
        t_greedy, t_top_p, t_batch, t_beam = (t[precision, case] for case in ("greedy", "top-p", "batch", "beam"))
        single, nucleus = N / t_greedy, N / t_top_p
        batched = 64 * N / t_batch
        beam_ratio = t_beam / t_greedy
        rows = [
            ("greedy, 1 stream", single, t_greedy, f">= 3,000 tok/s: {'met' if single >= 3000 else 'NOT met'} "
                                                   f"({single / 3000:.2f}x)"),
            ("top-p 0.95, 1 stream", nucleus, t_top_p, f">= 3,000 tok/s: {'met' if nucleus >= 3000 else 'NOT met'} "
                                                       f"({nucleus / 3000:.2f}x)"),
            ("top-p 0.95, 64 batched", batched, t_batch, f">= 30x single: {batched / nucleus:.1f}x "
                                                         f"({'met' if batched >= 30 * nucleus else 'NOT met'})"),
            ("beam width 5", N / t_beam, t_beam, f"step <= 2.5x greedy: {beam_ratio:.2f}x "
                                                 f"({'met' if beam_ratio <= 2.5 else 'NOT met'})"),
        ]
        if args.cache:
            for case, plain in (("greedy", t_greedy), ("top-p", t_top_p)):
                seconds = t[precision, case + "+cache"]
                cost = f"cost {(seconds - plain) / N * 1e6:+.0f} us/token ({seconds / plain:.2f}x the plain step)"
                rows.append((f"{case}, cache N={args.cache}", N / seconds, seconds, cost))
        for case, rate, seconds, aim in rows:
            print(f"{precision:<10}{case:<26}{rate:>10,.0f}{seconds / N * 1e3:>10.3f}   {aim}", flush=True)
    if args.device == "cpu":
        # The ceiling on batched throughput: a step of B streams is ~2 x params x B flops
        # of matrix products, so tokens/s <= peak flops / (2 x params per token).
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        flops = 2 * 1024**3 / timed(lambda: a @ b, 10)
        per_token = 2 * sum(p.numel() for n, p in model.named_parameters() if n.startswith(("rnn.weight", "decoder.w")))
        print(f"ceiling: float32 matrix product peak {flops / 1e9:.0f} GFLOP/s here, {per_token / 1e6:.1f} MFLOP per "
              f"token -> at most {flops / per_token:,.0f} tok/s for any batch; 30x a 3,000 tok/s stream would need "
              f"{30 * 3000 * per_token / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
