"""Sampling I/O: stop strings across token boundaries, prompt files and stdin, JSON-lines
records; each against an independent oracle (a brute-force search of the text, a fresh
forward pass of the model, brute-force beam search)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from test_sampling import tiny_model as sampling_tiny_model

from lmgen.errors import ConfigError
from lmgen.model import RNNLM
from lmgen.sampling import (
    GenerationConfig,
    Track,
    beam_search,
    generate,
    read_prompt,
    read_records,
    sample_records,
    stream,
    stream_samples,
    write_records,
)
from lmgen.sampling.textfiles import MAX_PROMPT_BYTES
from lmgen.tokenizer import build_tokenizer, decode_continuation

TEXT = "the cat sat on the mat.\nA dog, a log!\n"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char", [TEXT])


def tiny_model(vocab: int, seed: int = 0) -> RNNLM:
    """A random 2-layer LSTM whose next-token distributions are uneven but not degenerate
    (test_sampling's model with a milder decoder)."""
    return sampling_tiny_model(vocab, seed=seed, sharp=3.0)


def first_match_end(text: str, stops) -> tuple[int, str] | None:
    """Brute force: the shortest prefix of ``text`` that ends with a stop string."""
    for end in range(1, len(text) + 1):
        for s in stops:
            if text[:end].endswith(s):
                return end, s
    return None


def forward_logprob(model, prefix_ids, ids) -> float:
    """The model's log-probability of ``ids`` after ``prefix_ids``: one fresh full forward pass."""
    seq = list(prefix_ids) + list(ids)
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]]))[0][0]  # [T-1, V]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logp[len(prefix_ids) - 1 + i, t]) for i, t in enumerate(ids))


# -- stop strings ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["sample", "greedy"])
def test_stop_strings_spanning_char_tokens_stop_each_row_at_its_first_match(tok, strategy):
    model = tiny_model(tok.vocab_size, seed=3)
    base = GenerationConfig(do_sample=strategy == "sample", max_new_tokens=60, min_new_tokens=60,
                            num_return_sequences=5 if strategy == "sample" else 1)
    full = generate(model, tok, "the ", base, generator=torch.Generator().manual_seed(7))
    # stop strings of 2 and 3 chars (2 and 3 tokens) taken from the middle of the texts, so some
    # rows meet them and (usually) others do not; one that never occurs changes nothing
    stops = (full[0].text[20:23], full[-1].text[31:33], "\x00never")
    assert all(len(s) >= 2 for s in stops[:2])
    cut = generate(model, tok, "the ", base.replace(stop_strings=stops), generator=torch.Generator().manual_seed(7),
                   logprobs=True)
    stopped = 0
    for whole, part in zip(full, cut):
        hit = first_match_end(whole.text, stops)
        if hit is None:  # never met: the whole text, as without stop strings
            assert (part.text, part.ids, part.stop) == (whole.text, whole.ids, "length")
            continue
        end, s = hit
        assert part.text == whole.text[:end] and part.text.endswith(s)
        assert part.stop == f"stop:{s}"
        assert part.ids == whole.ids[:end]  # char tokens: one per character
        stopped += 1
    assert stopped >= 1 and first_match_end(full[0].text, stops) is not None
    # stream and the batched stream give the same texts (each row on its own generator)
    if strategy == "sample":
        pieces: dict[int, str] = {}
        for row, piece in stream_samples(model, tok, "the ", base.replace(stop_strings=stops),
                                         generator=torch.Generator().manual_seed(7)):
            pieces[row] = pieces.get(row, "") + piece
        assert [pieces.get(i, "") for i in range(5)] == [s.text for s in cut]
    else:
        assert "".join(stream(model, tok, "the ", base.replace(stop_strings=stops))) == cut[0].text


def test_stop_inside_one_word_token_keeps_the_token_and_cuts_its_text():
    tok = build_tokenizer("word", ["the cat sat on the mat . the dog sat on the log ."])
    ids = tok.encode("the cat sat on the mat .")
    for stops in [("t s",), ("at o", "n t"), ("ca",), ("mat .",), ("dog",)]:
        track = Track(tok, tok.end_id, 1, stops)
        pushed = 0
        for t in ids:
            if track.done[0]:
                break
            track.push(0, t)
            pushed += 1
        track.finish(0)
        text = decode_continuation(tok, ids)  # what the whole sentence decodes to
        hit = first_match_end(text, stops)
        if hit is None:
            assert track.take(0) == text and track.stops[0] == "length" and pushed == len(ids)
            continue
        end, s = hit
        assert track.take(0) == text[:end] and track.stops[0] == f"stop:{s}"
        # the ids run to the token that completed the match, overhang included
        assert len(decode_continuation(tok, ids[:pushed - 1])) < end <= len(decode_continuation(tok, ids[:pushed]))
        assert track.ids[0] == ids[:pushed]


def test_a_stop_string_in_the_prompt_does_not_stop(tok):
    model = tiny_model(tok.vocab_size, seed=3)
    config = GenerationConfig(do_sample=False, max_new_tokens=20, min_new_tokens=20)
    plain = generate(model, tok, "the cat", config)[0]
    assert "cat" not in plain.text
    assert generate(model, tok, "the cat", config.replace(stop_strings=("cat",)))[0] == plain


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_with_stop_strings_equals_brute_force(alpha):
    tok = build_tokenizer("char", ["abc"])  # V = 5: [END], <unk>, a, b, c
    V, N = tok.vocab_size, 3
    model = tiny_model(V, seed=11)
    stops = ("ab", "cc")  # each spans two tokens
    prompt = [tok.end_id] + tok.encode("b")

    def logp(ids):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids]))[0][0, -1].double(), -1)

    hyps = []
    for length in range(1, N + 1):
        for body in itertools.product(range(1, V), repeat=length):
            text = tok.decode(list(body))
            hit = first_match_end(text, stops)
            if hit is not None and hit[0] != len(text):
                continue  # it would have stopped earlier
            ends = [[]] if hit is not None or length == N else [[tok.end_id]]
            for tail in ends:
                tokens = list(body) + tail
                score, ids = 0.0, list(prompt)
                for t in tokens:
                    score += float(logp(ids)[t])
                    ids.append(t)
                stop = f"stop:{hit[1]}" if hit else ("end" if tail else "length")
                hyps.append((score / len(tokens) ** alpha, score, list(body), stop))
    hyps.append((float(logp(prompt)[tok.end_id]), float(logp(prompt)[tok.end_id]), [], "end"))  # [END] at once
    hyps.sort(key=lambda h: -h[0])
    W = (V - 1) ** (N - 1) * V  # every candidate of the last step ranks within the beam
    config = GenerationConfig(num_beams=W, num_return_sequences=W, max_new_tokens=N, do_sample=False,
                              length_penalty=alpha, stop_strings=stops)
    found = beam_search(model, tok, "b", config)
    assert [(s.ids, s.stop) for s in found] == [(h[2], h[3]) for h in hyps[:W]]
    for s, (norm, score, ids, _) in zip(found, hyps):
        assert s.score == pytest.approx(score, abs=1e-5) and s.normalized == pytest.approx(norm, abs=1e-5)
        assert s.text == tok.decode(ids)
    assert any(s.stop.startswith("stop:") for s in found)


def test_stop_strings_are_validated():
    assert GenerationConfig(stop_strings="\n").stop_strings == ("\n",)
    assert GenerationConfig(stop_strings=["a", "bc"]).stop_strings == ("a", "bc")
    with pytest.raises(ConfigError, match="--stop must be non-empty strings"):
        GenerationConfig(stop_strings=("a", ""))
    with pytest.raises(ConfigError, match="--stop"):
        GenerationConfig(stop_strings=(3,))


# -- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    GenerationConfig(num_return_sequences=4, max_new_tokens=30, temperature=1.7, top_k=6, repetition_penalty=1.3,
                     stop_strings=("at",)),
    GenerationConfig(do_sample=False, max_new_tokens=25, min_new_tokens=3),
    GenerationConfig(num_beams=3, num_return_sequences=2, do_sample=False, max_new_tokens=12, repetition_penalty=1.2),
], ids=["sample", "greedy", "beam"])
def test_records_logprob_equals_a_fresh_forward_pass(tok, config, tmp_path):
    model = tiny_model(tok.vocab_size, seed=5)
    records = sample_records(model, tok, "a dog", config, seed=9)
    assert len(records) == config.num_return_sequences
    prefix = [tok.end_id] + tok.encode("a dog")
    for i, r in enumerate(records):
        assert (r.index, r.prompt, r.seed, r.tokens) == (i, "a dog", 9, len(r.ids))
        scored = r.ids + ([tok.end_id] if r.stop == "end" else [])
        # the model's own log-probability: before temperature, top-k, penalty and min_new_tokens
        assert r.logprob == pytest.approx(forward_logprob(model, prefix, scored), abs=1e-4)
        whole = decode_continuation(tok, r.ids, prefix[-1])
        hit = first_match_end(whole, config.stop_strings)
        assert r.stop == f"stop:{hit[1]}" if hit else r.stop in ("end", "length")
        assert r.text == (whole[:hit[0]] if hit else whole)
    # the same seed gives the same records; the file round-trips, one JSON object a line
    again = sample_records(model, tok, "a dog", config, seed=9)
    assert again == records
    path = tmp_path / "s.jsonl"
    write_records(records, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records) and all(json.loads(line)["stop"] for line in lines)
    assert read_records(path) == records
    assert sorted(os.listdir(tmp_path)) == ["s.jsonl"]  # no temporary file left behind


# -- prompt files ---------------------------------------------------------------------------


def test_read_prompt_from_a_file_and_from_stdin(tmp_path):
    import io

    f = tmp_path / "p.txt"
    for raw, expected in [("Dear Anna,\n", "Dear Anna,"), ("two\nlines\r\n", "two\nlines"), ("keep\n\n", "keep\n"),
                          ("\ufeffnote", "note"), ("", ""), ("é ünï", "é ünï")]:
        f.write_bytes(raw.encode("utf-8"))
        assert read_prompt(f) == expected
        assert read_prompt("-", stdin=io.BytesIO(raw.encode("utf-8"))) == expected
    f.write_bytes(b"ok \xff bad")
    with pytest.raises(ConfigError, match=r"--prompt-file .* is not UTF-8 text \(byte 3 is 0xff\)"):
        read_prompt(f)
    f.write_bytes(b"a" * (MAX_PROMPT_BYTES + 1))
    with pytest.raises(ConfigError, match="over 131,072 bytes"):
        read_prompt(f)
    f.write_bytes(b"a" * MAX_PROMPT_BYTES)
    assert len(read_prompt(f)) == MAX_PROMPT_BYTES
    with pytest.raises(ConfigError, match="no such file"):
        read_prompt(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="is a folder"):
        read_prompt(tmp_path)


# -- the command line -------------------------------------------------------------------------


def run_cli(*args, stdin: str | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "lmgen", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=180, input=stdin)


def test_cli_prompt_file_stdin_stop_and_jsonl(tiny_checkpoint, tmp_path):
    from lmgen import load
    from lmgen.sampling import config_from_flags

    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("The cat\n", encoding="utf-8")
    out = tmp_path / "samples.jsonl"
    flags = ["--num-samples", "4", "--seed", "5", "--max-new-tokens", "60", "--stop", "at", "--stop", r"\n",
             "--temperature", "1.0", "--precision", "float32"]
    made = run_cli("sample", tiny_checkpoint, "--prompt-file", prompt_file, *flags, "--out", out)
    assert made.returncode == 0, made.stderr
    assert made.stdout == "" and f"wrote 4 samples to {out}" in made.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    model, tok = load(tiny_checkpoint)
    prefix = [tok.end_id] + tok.encode("The cat")
    for i, r in enumerate(records):
        assert set(r) == {"index", "text", "prompt", "seed", "tokens", "ids", "logprob", "stop"}
        assert (r["index"], r["prompt"], r["seed"], r["tokens"]) == (i, "The cat", 5, len(r["ids"]))
        assert r["logprob"] == pytest.approx(
            forward_logprob(model, prefix, r["ids"] + ([tok.end_id] if r["stop"] == "end" else [])), abs=1e-4)
        hit = first_match_end(tok.decode(r["ids"]), ("at", "\n"))
        assert r["stop"] == f"stop:{hit[1]}" if hit else r["stop"] in ("end", "length")
        assert r["text"] == (tok.decode(r["ids"])[:hit[0]] if hit else tok.decode(r["ids"]))
    # the API gives the same records
    config = config_from_flags(num_samples=4, max_new_tokens=60, temperature=1.0).replace(stop_strings=("at", "\n"))
    assert [r["text"] for r in records] == [r.text for r in sample_records(model, tok, "The cat", config, seed=5)]
    # printed instead: the same texts, the prompt read from stdin this time
    shown = run_cli("sample", tiny_checkpoint, "--prompt", "-", *flags, stdin="The cat\n")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "".join(f"{'' if i == 0 else chr(10)}--- sample {i + 1} of 4 ---\nThe cat{r['text']}"
                                   for i, r in enumerate(records)) + "\n"


def test_cli_prompt_and_out_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    from lmgen.cli import main

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (MAX_PROMPT_BYTES + 10))
    good = tmp_path / "ok.txt"
    good.write_text("hi", encoding="utf-8")
    cases = [
        (["--prompt-file", tmp_path / "nope.txt"], "--prompt-file", "no such file"),
        (["--prompt-file", bad], "is not UTF-8 text", "iconv"),
        (["--prompt-file", big], "over 131,072 bytes", "tail -c"),
        (["--prompt-file", tmp_path], "is a folder", "--prompt-file"),
        (["--prompt-file", good, "--prompt", "x"], "--prompt and --prompt-file exclude each other", ""),
        (["--out", tmp_path], "--out", "is a folder"),
        (["--out", tmp_path / "no" / "s.jsonl"], "does not exist", "create it first"),
        (["--out", "-"], "--out needs a file name", "stdout"),
    ]
    for args, *messages in cases:
        code = main(["sample", str(tiny_checkpoint), *map(str, args)])
        err = capsys.readouterr().err
        assert code in (1, 2), (args, err)
        assert all(m in err for m in messages), (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):  # a usage error, as argparse reports them
        main(["sample", str(tiny_checkpoint), "--stop", ""])
    assert "--stop: must not be empty" in capsys.readouterr().err
