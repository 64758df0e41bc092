"""Originality (lmgen/copycheck/): the suffix array, the longest-copy walk, the n-gram share
and --max-copy, each against a brute-force search; the cache; the command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lmgen.copycheck.build as build_module
from lmgen.cli import main
from lmgen.copycheck import (
    CopyGuard,
    build_suffix_array,
    copy_report,
    index_of_tokens,
    match_lengths,
    open_index,
    split_samples,
    training_index,
)
from lmgen.errors import ConfigError
from lmgen.tokenizer import build_tokenizer

END = 0


# -- brute force: the oracles


def brute_order(T: list[int]) -> list[int]:
    """Entries 1..n sorted by their prefix read backwards (a shorter reading first)."""
    return sorted(range(1, len(T) + 1), key=lambda e: T[:e][::-1])


def ends_of(T: list[int], span: list[int]) -> set[int]:
    """Exclusive ends of the occurrences of ``span`` in ``T``."""
    k = len(span)
    return {e for e in range(k, len(T) + 1) if T[e - k : e] == span}


def brute_match(T: list[int], newest_first: list[int]) -> int:
    k = 0
    while k < len(newest_first) and ends_of(T, newest_first[: k + 1][::-1]):
        k += 1
    return k


def as_text(ids: list[int]) -> str:
    """Token ids as a string, one character each: `in` is then a substring search."""
    return "".join(chr(0x100 + t) for t in ids)


def brute_lengths(T: list[int], ids: list[int]) -> list[int]:
    """m[i]: the longest training span ending at token i, never through an [END] of ids."""
    train, out = as_text(T), []
    for i in range(len(ids)):
        k = 0
        while k <= i and ids[i - k] != END and as_text(ids[i - k : i + 1]) in train:
            k += 1
        out.append(k)
    return out


def brute_banned(T: list[int], history: list[int], limit: int) -> set[int]:
    tail = history[len(history) - history[::-1].index(END):] if END in history else list(history)
    tail = tail[-limit:]
    if len(tail) < limit:
        return set()
    return {t for t in set(T) if t != END and ends_of(T, tail + [t])}


def random_corpus(rng: np.random.Generator, V: int, n: int) -> np.ndarray:
    """Random ids, or a short motif repeated (long repeats: many sorting rounds), with some [END]s."""
    dtype = np.uint16 if V <= 65536 else np.uint32
    if rng.random() < 0.3:
        motif = rng.integers(0, V, int(rng.integers(1, 6)))
        return np.resize(motif, n).astype(dtype)
    return rng.integers(0, V, n).astype(dtype)


# -- the suffix array


@pytest.mark.parametrize("memory, window", [(1 << 20, None), (64 * 8, 5), (64 * 20, 64)])
def test_suffix_array_equals_brute_force(tmp_path, memory, window, monkeypatch):
    """In memory, and cut into buckets of 8 or 20 entries read through windows of 5 or 64 tokens."""
    cuts = []
    monkeypatch.setattr(build_module, "_distribute",
                        lambda *a, **k: cuts.append(1) or _distribute(*a, **k))
    rng = np.random.default_rng(memory)
    for trial in range(60):
        V = int(rng.choice([1, 2, 3, 30, 300, 70000]))
        n = int(rng.integers(0, 250))
        T = random_corpus(rng, V, n)
        T.tofile(tmp_path / "t.bin")
        first, pairs = build_suffix_array(tmp_path / "t.bin", T.dtype, n, V, tmp_path / "t.sa", memory=memory,
                                          window=window)
        order = np.fromfile(tmp_path / "t.sa", np.uint32).tolist()
        assert order == brute_order(T.tolist()), (trial, V, n)
        Tl = T.tolist()
        for v in range(min(V, 40)):  # each newest token's (and pair's) entries are where the tables say
            assert {e for e in order[first[v] : first[v + 1]]} == {e for e in range(1, n + 1) if Tl[e - 1] == v}
            for w in range(min(V, 40)) if pairs is not None else []:
                assert set(order[pairs[v, w] : pairs[v, w + 1]]) == {
                    e for e in range(2, n + 1) if (Tl[e - 1], Tl[e - 2]) == (v, w)}
        assert (pairs is None) == (V > 1024)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sa-")] == []  # no bucket files left
    assert bool(cuts) == (memory < 1 << 20)  # the small budgets really went through the buckets


_distribute = build_module._distribute


def test_match_equals_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    for trial in range(40):
        V = int(rng.choice([2, 3, 20]))
        T = random_corpus(rng, V, int(rng.integers(1, 200)))
        index = index_of_tokens(T, V, tmp_path, end_id=END)
        Tl = T.tolist()
        for _ in range(20):
            if rng.random() < 0.5:  # a real span of the corpus, then noise: long matches
                a = int(rng.integers(0, len(Tl)))
                pattern = Tl[a : a + int(rng.integers(1, 30))][::-1] + rng.integers(0, V + 1, 5).tolist()
            else:
                pattern = rng.integers(0, V + 1, int(rng.integers(0, 12))).tolist()  # V itself: not in the vocabulary
            limit = int(rng.integers(1, 40))
            k, lo, hi = index.match(pattern, limit)
            assert k == brute_match(Tl, pattern[:limit]), (trial, pattern, limit)
            if k:
                assert set(index.entries[lo:hi].tolist()) == ends_of(Tl, pattern[:k][::-1])
                assert index.following(lo, hi).tolist() == sorted(
                    {Tl[e] for e in ends_of(Tl, pattern[:k][::-1]) if e < len(Tl)})


def test_longest_span_and_ngram_share_equal_brute_force(tmp_path):
    rng = np.random.default_rng(2)
    text = "".join(rng.choice(list("abcd \n"), 400))
    tok = build_tokenizer("char", [text])
    T = np.array(tok.encode(text), np.uint16)
    index = index_of_tokens(T, tok.vocab_size, tmp_path, end_id=tok.end_id)
    Tl = T.tolist()
    for _ in range(25):
        a, b = sorted(rng.integers(0, len(Tl), 2).tolist())
        ids = rng.integers(2, tok.vocab_size, 10).tolist() + Tl[a:b] + rng.integers(2, tok.vocab_size, 5).tolist()
        m, _ = match_lengths(index, ids)
        want = brute_lengths(Tl, ids)
        assert m.tolist() == want
        report = copy_report(index, tok, ids)
        assert report.longest == max(want, default=0)
        assert report.start == want.index(report.longest) - report.longest + 1  # the first longest
        span = ids[report.start : report.start + report.longest]
        assert Tl[report.train_offset : report.train_offset + report.longest] == span
        assert report.occurrences == len(ends_of(Tl, span))
        assert report.span == tok.decode(span)
        grams = [ids[i : i + 8] for i in range(len(ids) - 7)]
        assert (report.n, report.ngrams) == (8, len(grams))
        assert report.ngrams_in_training == sum(as_text(g) in as_text(Tl) for g in grams)
    assert match_lengths(index, [Tl[0], END, Tl[1]])[0].tolist()[1] == 0  # no copy through an [END]


def test_ngram_order_is_4_for_words(tmp_path):
    text = "the cat sat on the mat and the dog sat on the log " * 3
    tok = build_tokenizer("word", [text])
    T = np.array(tok.encode(text), np.uint16)
    index = index_of_tokens(T, tok.vocab_size, tmp_path, end_id=tok.end_id)
    ids = tok.encode("the dog sat on the mat and")
    report = copy_report(index, tok, ids)
    Tl = T.tolist()
    assert (report.n, report.ngrams) == (4, len(ids) - 3)
    assert report.ngrams_in_training == sum(bool(ends_of(Tl, ids[i : i + 4])) for i in range(len(ids) - 3))
    assert report.longest == max(brute_lengths(Tl, ids)) and report.unit == "tokens"


# -- --max-copy


def test_guard_bans_exactly_what_would_copy_too_much(tmp_path):
    """banned() and the incremental mask/push/keep of a batch, step by step, against brute force."""
    rng = np.random.default_rng(3)
    for trial in range(12):
        V = int(rng.choice([3, 5, 12]))
        T = random_corpus(rng, V, int(rng.integers(20, 300)))
        index = index_of_tokens(T, V, tmp_path, end_id=END)
        Tl = T.tolist()
        limit = int(rng.integers(1, 6))
        guard = CopyGuard(index, limit)
        start = Tl[: int(rng.integers(0, 8))]  # a prompt copied from training: bans at once
        rows = 4
        histories = [[END] + start for _ in range(rows)]
        guard.start(histories[0], rows)
        for step in range(30):
            scores = guard.mask(torch.zeros(len(histories), V))
            chosen = []
            for r, history in enumerate(histories):
                want = brute_banned(Tl, history, limit)
                masked = set(torch.nonzero(torch.isinf(scores[r])).flatten().tolist())
                assert masked == want, (trial, step, history)
                assert set(guard.banned(history).tolist()) == want
                allowed = [t for t in range(V) if t not in masked]
                # mostly the token that copies most (follow the training text), sometimes [END]
                copying = [t for t in allowed if t != END and ends_of(Tl, history[-2:] + [t])]
                chosen.append(int(rng.choice(copying)) if copying and rng.random() < 0.8 else int(rng.choice(allowed)))
            guard.push(chosen)
            keep = [r for r, t in enumerate(chosen) if t != END or rng.random() < 0.5]
            histories = [histories[r] + [chosen[r]] for r in keep]
            if not keep:
                break
            guard.keep(keep)


def test_when_every_token_is_banned_the_sample_ends(tmp_path):
    """After a 1 every token but [END] follows a 1 in training: [END] stays allowed, and is
    allowed again when --min-new-tokens had forbidden it (nothing else is left)."""
    index = index_of_tokens(np.array([1, 1, 2, 1, 2, 2], np.uint16), 3, tmp_path, end_id=END)
    guard = CopyGuard(index, 1)
    guard.start([END, 1], 2)
    inf = float("inf")
    scores = guard.mask(torch.tensor([[0.5, 1.0, 2.0], [-inf, 1.0, 2.0]]))
    assert scores.tolist() == [[0.5, -inf, -inf], [0.0, -inf, -inf]]


def test_guard_refuses_a_bad_limit(tmp_path):
    index = index_of_tokens(np.array([1, 2, 3], np.uint16), 4, tmp_path)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="--max-copy must be a whole number"):
            CopyGuard(index, bad)


def longest_copy(train: str, text: str) -> int:
    """The independent oracle: the longest substring of ``text`` found in ``train`` (str.find)."""
    best = 0
    for i in range(len(text)):
        while i + best < len(text) and text[i : i + best + 1] in train:
            best += 1
    return best


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, tiny_corpus):
    """A tiny char-LSTM that has learnt the repetitive tiny corpus by heart (~3 s): it copies."""
    from lmgen.config import ModelConfig, TrainConfig
    from lmgen.train import train

    out = tmp_path_factory.mktemp("copier") / "run"
    cfg = TrainConfig(corpus=str(tiny_corpus), batch=8, bptt=64, steps=300, eval_every=300, lr=2e-2, warmup=0,
                      progress=False, out=str(out), seed=0)
    train(cfg, ModelConfig(embed=16, hidden=64, layers=1), log=lambda msg: None)
    return out


@pytest.fixture(scope="module")
def trained(run_folder):
    from lmgen.checkpoint import load_checkpoint
    from lmgen.report import checkpoint_corpus

    ckpt = load_checkpoint(run_folder)
    train = checkpoint_corpus(ckpt).text("train")
    return ckpt, train


def test_max_copy_20_on_a_real_model(trained, run_folder, capsys):
    """A tiny model of a repetitive text copies long spans; with --max-copy 20 no sample holds
    a training span of 21 characters, by str.find over the training text."""
    from lmgen.sampling import GenerationConfig, Session, generate, prime

    ckpt, train = trained
    config = GenerationConfig(temperature=0.8, max_new_tokens=300, num_return_sequences=4)
    g = torch.Generator().manual_seed(0)
    free = generate(ckpt.model, ckpt.tokenizer, "The cat", config, generator=g)
    assert max(longest_copy(train, "The cat" + s.text) for s in free) > 40  # the control: it does copy

    index = training_index(ckpt)
    for cfg in (config, config.replace(do_sample=False, num_return_sequences=1)):
        ctx = prime(ckpt.model, ckpt.tokenizer, "The cat")
        ctx.guard = guard = CopyGuard(index, 20)
        samples = generate(ckpt.model, ckpt.tokenizer, ctx, cfg, generator=torch.Generator().manual_seed(0))
        for s in samples:
            assert longest_copy(train, "The cat" + s.text) <= 20
        assert guard.masked > 0 and sum(len(s.text) for s in samples) > 100 * len(samples)

    assert main(["sample", str(run_folder), "--max-copy", "20", "--num-samples", "3", "--max-new-tokens", "200",
                 "--prompt", "The dog", "--seed", "1"]) == 0
    printed = split_samples(capsys.readouterr().out)
    assert len(printed) == 3 and all(longest_copy(train, s) <= 20 for s in printed)

    one = config.replace(num_return_sequences=1)
    session = Session(ckpt.model, ckpt.tokenizer, one, copy_guard=CopyGuard(index, 20))
    text = "".join(session.generate("He said")) + "".join(session.generate(None))  # a new text, then more of it
    assert len(text) > 400 and longest_copy(train, text) <= 20  # the REPL's --max-copy


def test_check_copy_reports_after_each_sample(trained, run_folder, capsys):
    ckpt, _ = trained
    assert main(["sample", str(run_folder), "--check-copy", "--num-samples", "2", "--max-new-tokens", "80",
                 "--prompt", "He said"]) == 0
    out = capsys.readouterr().out
    index = training_index(ckpt)
    for body in out.split("--- sample ")[1:]:
        text, _, report = body.partition("\n[copycheck] ")
        text = text.split("---\n", 1)[1]
        want = copy_report(index, ckpt.tokenizer, ckpt.tokenizer.encode(text)).format().splitlines()
        assert ("[copycheck] " + report.rstrip("\n")).splitlines() == ["[copycheck] " + line for line in want]


def test_out_records_obey_max_copy_and_get_reports(trained, run_folder, tmp_path, capsys):
    ckpt, train = trained
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(run_folder), "--max-copy", "20", "--check-copy", "--num-samples", "2",
                 "--max-new-tokens", "150", "--out", str(out)]) == 0
    texts = split_samples(out.read_text())
    assert len(texts) == 2 and all(longest_copy(train, t) <= 20 for t in texts)
    printed = capsys.readouterr().out
    index = training_index(ckpt)
    for t in texts:
        assert copy_report(index, ckpt.tokenizer, ckpt.tokenizer.encode(t)).format().splitlines()[0] in printed


def test_max_copy_refuses_beam(run_folder, capsys):
    assert main(["sample", str(run_folder), "--max-copy", "5", "--beam", "2"]) == 1
    assert "--max-copy works with greedy search and sampling" in capsys.readouterr().err


# -- the cache


def test_the_index_is_cached_and_rebuilt_when_its_source_changes(tmp_path):
    T = np.array([3, 1, 2, 3, 1, 2, 0, 2, 2], np.uint16)
    path = tmp_path / "split.bin"
    T.tofile(path)
    tokens = np.memmap(path, np.uint16, mode="r")
    first = open_index(path, tokens, 4)
    assert first.built and first.entries.tolist() == brute_order(T.tolist())
    again = open_index(path, tokens, 4)
    assert not again.built and again.entries.tolist() == first.entries.tolist()
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the token file was written again
    assert open_index(path, tokens, 4).built
    assert not open_index(path, tokens, 4).built
    assert open_index(path, tokens, 5).built  # another vocabulary
    sa = path.with_suffix(".sa")
    sa.write_bytes(sa.read_bytes()[:-4])  # truncated
    assert open_index(path, tokens, 5).built
    path.with_suffix(".sa.json").write_text("{not json")
    rebuilt = open_index(path, tokens, 5)
    assert rebuilt.built and rebuilt.entries.tolist() == brute_order(T.tolist())


def test_each_corpus_has_its_own_index_beside_its_tokens(tmp_path):
    from lmgen import corpora
    from lmgen.data import encode_split

    paths = []
    for k, text in enumerate(["abcabcabd " * 50, "abcabcabe " * 50]):
        f = tmp_path / f"c{k}.txt"
        f.write_text(text)
        corpus = corpora.resolve(str(f))
        tok = build_tokenizer("char", ["abcde "])
        split = encode_split(corpus, tok, "train")
        index = open_index(split.path, split.tokens, tok.vocab_size, end_id=tok.end_id)
        assert index.built and index.path == split.path.with_suffix(".sa")
        assert not open_index(split.path, split.tokens, tok.vocab_size).built
        paths.append(index.path)
    assert paths[0] != paths[1]


# -- the command line


def test_copycheck_command(run_folder, trained, tmp_path, capsys, monkeypatch):
    ckpt, train = trained
    samples = [train[100:160] + "zzqq", "qq xyz qq", train[3000:3010]]
    f = tmp_path / "samples.txt"
    f.write_text("".join(f"{'' if k == 0 else chr(10)}--- sample {k + 1} of 3 ---\n{s}" for k, s in enumerate(samples))
                 + "\n")
    assert main(["copycheck", str(run_folder), str(f), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["samples"]
    index = training_index(ckpt)
    want = [copy_report(index, ckpt.tokenizer, ckpt.tokenizer.encode(s)).to_dict() for s in samples]
    assert got == want
    assert got[0]["longest"] == longest_copy(train, samples[0])

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(samples[0].encode())))
    assert main(["copycheck", str(run_folder), "-"]) == 0
    out = capsys.readouterr().out
    assert f"longest copied span: {got[0]['longest']} characters" in out and "8-grams found in training" in out

    records = tmp_path / "s.jsonl"
    records.write_text("".join(json.dumps({"prompt": "", "text": s}) + "\n" for s in samples))
    proc = subprocess.run([sys.executable, "-m", "lmgen", "copycheck", str(run_folder), str(records), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples"] == want


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "is empty"),
    (b"\xff\xfe\x00bad", "is not UTF-8"),
    (b'{"text": "ok"}\nnot json\n', "line 2: not a sample record"),
    (b"junk\n--- sample 1 of 1 ---\nabc\n", "text before its first"),
])
def test_copycheck_errors_are_one_line(run_folder, tmp_path, capsys, content, message):
    f = tmp_path / "in.txt"
    if content is not None:
        f.write_bytes(content)
    assert main(["copycheck", str(run_folder), str(f)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_copycheck_usage_errors(run_folder, tmp_path, capsys):
    (tmp_path / "s.txt").write_text("some sample")
    assert main(["copycheck", str(tmp_path / "nothing"), str(tmp_path / "s.txt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(run_folder), "--max-copy", "0"])
    assert exc.value.code == 2 and "must be >= 1 token" in capsys.readouterr().err


def test_split_samples_reads_what_lmgen_sample_prints():
    texts = ["ab\n\n", "", "c d", "\n--- not a header\n"]
    # as cmd_sample writes them: "\n" before each next header, one after the last sample
    printed = "".join(("\n" if k else "") + f"--- sample {k + 1} of 4 ---\n" + t for k, t in enumerate(texts)) + "\n"
    assert split_samples(printed) == texts
    assert split_samples("one text\n\nwith lines\n") == ["one text\n\nwith lines"]
    assert split_samples('{"prompt": "A", "text": "b"}\n\n{"text": "c"}\n') == ["Ab", "c"]


def test_index_of_an_empty_split(tmp_path):
    index = index_of_tokens(np.zeros(0, np.uint16), 3, tmp_path)
    assert index.match([1, 2]) == (0, 0, 0)
    assert CopyGuard(index, 2).banned([1, 2]).tolist() == []
    assert Path(index.path).exists()
