"""Train and evaluate each named config on the shared corpora: one printed line per run.

    python benchmarks/results.py                      # every config in BENCHMARKS (long)
    python benchmarks/results.py --quick              # a sanity run: tiny budget, shrunken models
    python benchmarks/results.py --only ptb-zaremba-small --device cuda
    python benchmarks/results.py --jsonl results.jsonl   # also append every figure as JSON
    python benchmarks/results.py --only enwiki-char --time 12m   # a CPU-sized budget

Each line: corpus, tokenizer (vocabulary), model, parameters, training time, device, the
figure the field reports on that corpus (test perplexity, validation loss or bits per
character) and the published reference. With a 5-gram Kneser-Ney row for the word-level
corpora (fitted to the same training split, same tokenizer, same evaluator).

--quick caps training at a few hundred steps, shrinks the models (hidden <= 128) and
scores only the first --quick-tokens tokens of the split: its figures check that the
pipeline works and are far from the full-budget ones; they are labelled "quick".
Needs the corpora mirror ($LMGEN_CORPORA, default ../shared/corpora).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmgen import corpora  # noqa: E402
from lmgen.config import load_recipe  # noqa: E402
from lmgen.data import encode_split  # noqa: E402
from lmgen.evaluate import evaluate_split, model_label  # noqa: E402
from lmgen.ngram import NgramLM  # noqa: E402

# config file stem -> (split, figure, published reference)
BENCHMARKS = {
    "tinyshakespeare-char": ("valid", "loss", "nanoGPT baby GPT 1.47 (a transformer)"),
    "ptb-zaremba-small": ("test", "ppl", "Zaremba 2014 small 114.5"),
    "ptb-window": ("test", "ppl", "Mikolov 2011: feed-forward NNLM ~140, KN5 141.2"),
    "ptb-medium": ("test", "ppl", "Zaremba 2014 medium 82.7 / large 78.4"),
    "wikitext2-word": ("test", "ppl", "AWD-LSTM 65.8 (68.6 valid)"),
    "wikitext2-spm": ("test", "bpc", "-"),
    "wikitext2-spm-cpu": ("test", "bpc", "-"),
    "enwiki-char": ("test", "bpc", "- (enwik8: Graves 2013 LSTM 1.67 bits/byte)"),
    "enwiki-char-cpu": ("test", "bpc", "- (enwik8: Graves 2013 LSTM 1.67 bits/byte)"),
}
NGRAM_ROWS = {"ptb-zaremba-small": "Mikolov 2011 KN5 141.2", "wikitext2-word": "-"}
# skipped on CPU unless named with --only; the *-cpu configs are CPU-sized versions
GPU_ONLY = {"ptb-medium", "wikitext2-word", "wikitext2-spm", "enwiki-char"}


def figure(result, kind: str) -> str:
    if kind == "ppl":
        return f"ppl {result.perplexity:.2f}"
    if kind == "bpc":
        text = (f"{result.bits_per_char:.4f} bits/char" if result.bits_per_char
                else f"{result.bits_per_token:.4f} bits/tok")
        if result.bits_per_byte and result.num_bytes != result.chars:
            text += f" ({result.bits_per_byte:.4f} bits/byte)"
        return text
    return f"loss {result.loss:.4f} nats/token"


def line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


HEADER = ["config", "corpus", "tokenizer", "model", "params", "train time", "device", "split", "figure",
          "reference"]


def run(name: str, args: argparse.Namespace) -> list[dict]:
    import torch

    from lmgen.devices import resolve_device
    from lmgen.train import train

    split, kind, reference = BENCHMARKS[name]
    cfg, model_cfg = load_recipe(str(REPO / "configs" / f"{name}.toml"))
    device = resolve_device(args.device)
    overrides = dict(out=str(Path(args.out) / name), progress=False, device=str(device.type),
                     threads=args.threads)
    if args.time:  # a CPU-sized budget for a GPU-sized recipe; the cosine schedule follows it
        overrides.update(time=args.time, steps=0, epochs=0.0)
    if args.quick:
        overrides.update(steps=args.quick_steps, epochs=0.0, time="", eval_every=args.quick_steps,
                         eval_tokens=5000, warmup=min(cfg.warmup, args.quick_steps // 10),
                         batch=min(cfg.batch, 16), bptt=min(cfg.bptt, 64))
        model_cfg = dataclasses.replace(model_cfg, hidden=min(model_cfg.hidden, 128),
                                        embed=min(model_cfg.embed, 128))
    cfg = dataclasses.replace(cfg, **overrides)
    start = time.perf_counter()
    result = train(cfg, model_cfg, overwrite=True, log=lambda msg: None)
    from lmgen import load

    model, tok = load(cfg.out, device=device)
    corpus = corpora.resolve(cfg.corpus)
    if split not in corpus.splits:
        split = "valid"
    max_tokens = args.quick_tokens if args.quick else 0
    batch = 16 if args.quick else 1  # the table's figures are exact-mode ones
    res = evaluate_split(model, tok, corpus, split, batch=batch, max_tokens=max_tokens, label=model_label(model))
    tag = " (quick)" if args.quick else ""
    if result.stopped_by == "interrupted":  # Ctrl-C / SIGTERM: the figure is not the recipe's
        tag += f" (INTERRUPTED at step {result.steps})"
    where = f"{split}{f' first {max_tokens:,} tok' if max_tokens else ''}"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    rows = [dict(config=name, corpus=corpus.name, tokenizer=f"{tok.kind} ({tok.vocab_size:,})",
                 model=res.label, params=model.num_parameters(), train_seconds=result.train_seconds,
                 steps=result.steps, device=dev, split=where, figure=figure(res, kind) + tag,
                 reference=reference, result=res.to_dict(), wall_seconds=time.perf_counter() - start)]
    if name in NGRAM_ROWS and not args.no_ngram:
        t0 = time.perf_counter()
        train_tokens = encode_split(corpus, tok, "train").tokens
        lm = NgramLM.fit(train_tokens, 5, tok.vocab_size, tok.end_id)
        fit_seconds = time.perf_counter() - t0
        nres = evaluate_split(lm, tok, corpus, split, batch=1, max_tokens=max_tokens, label=lm.label)
        rows.append(dict(config=name, corpus=corpus.name, tokenizer=rows[0]["tokenizer"], model=lm.label,
                         params=lm.num_parameters(), train_seconds=fit_seconds, steps=0, device="cpu (numpy)",
                         split=where, figure=figure(nres, kind) + (" (quick: eval prefix)" if args.quick else ""),
                         reference=NGRAM_ROWS[name], result=nres.to_dict(),
                         wall_seconds=time.perf_counter() - t0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sanity run: tiny budget, shrunken models")
    parser.add_argument("--quick-steps", type=int, default=100, help="training steps per run with --quick")
    parser.add_argument("--quick-tokens", type=int, default=20000, help="tokens scored per run with --quick")
    parser.add_argument("--time", default="", help="train every run for this long instead of its own budget "
                        "(e.g. 12m): the recipe's model and optimiser on a smaller budget")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these configs")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--out", default="checkpoints/bench", help="folder for the run folders")
    parser.add_argument("--no-ngram", action="store_true", help="skip the 5-gram KN rows")
    parser.add_argument("--jsonl", default=None, help="also append every row as JSON to this file")
    args = parser.parse_args(argv)

    from lmgen.devices import resolve_device

    if corpora.mirror_folder() is None:
        default = REPO.parent / "shared" / "corpora"
        if default.is_dir():
            os.environ[corpora.MIRROR_ENV] = str(default)
    names = args.only or [n for n in BENCHMARKS
                          if not (n in GPU_ONLY and resolve_device(args.device).type == "cpu")]
    skipped = sorted(set(BENCHMARKS) - set(names))
    print(f"# lmgen results{' (QUICK sanity run: not the real figures)' if args.quick else ''}; "
          f"configs in configs/; {time.strftime('%Y-%m-%d %H:%M')}"
          + (f"; skipped on this device: {', '.join(skipped)}" if skipped and not args.only else ""), flush=True)
    print(line(HEADER))
    print(line(["---"] * len(HEADER)), flush=True)
    for name in names:
        try:
            rows = run(name, args)
        except Exception as exc:  # one broken run must not hide the others' figures
            print(line([name, "-", "-", "-", "-", "-", "-", "-", f"FAILED: {type(exc).__name__}: {exc}", "-"]),
                  flush=True)
            continue
        for row in rows:
            print(line([row["config"], row["corpus"], row["tokenizer"], row["model"], f"{row['params'] / 1e6:.2f}M",
                        f"{row['train_seconds']:.0f} s" + (f" ({row['steps']} steps)" if row["steps"] else ""),
                        row["device"], row["split"], row["figure"], row["reference"]]), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
