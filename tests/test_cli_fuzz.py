"""Property-based: random flag values and random bytes never end in a traceback."""


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgen.cli import main

ints = st.sampled_from(["-1", "0", "1", "2", "3", "8", str(10**12), "1.5", "x", ""])
floats = st.sampled_from(["-1", "0", "0.5", "0.99", "1", "1.5", "nan", "inf", "-inf", "1e-9", "abc"])
FLAGS = {
    "--steps": st.sampled_from(["-2", "0", "1", "2", "x", "2.5"]),
    "--hidden": ints, "--embed": ints, "--layers": st.sampled_from(["-1", "0", "1", "2", "x"]),
    "--batch": ints, "--bptt": ints, "--dropout": floats, "--lr": floats, "--clip": floats,
    "--warmup": ints, "--min-lr": floats, "--weight-decay": floats, "--momentum": floats,
    "--time": st.sampled_from(["", "0", "1s", "-5m", "10x", "1e3", "2h"]),
    "--epochs": floats, "--tokenizer": st.sampled_from(["char", "word", "spm", "bpe", ""]),
    "--cell": st.sampled_from(["lstm", "gru", "rnn", "window", "LSTM"]),
    "--spm-vocab": ints, "--eval-every": ints, "--optimizer": st.sampled_from(["adamw", "sgd", "adam"]),
    "--schedule": st.sampled_from(["cosine", "plateau", "constant", "linear"]),
    "--device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
}

QUICK = ["--steps", "1", "--hidden", "8", "--embed", "4", "--eval-tokens", "64", "--no-progress", "--batch", "2"]


def assert_clean(code, err):
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if code:
        assert err.strip(), "a failure must say why"
        lines = err.strip().splitlines()
        assert len(lines) <= 4 and "error" in lines[-1], err


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), min_size=1, max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: FLAGS[k] for k in keys})))
def test_random_flag_values_exit_cleanly(flags, tiny_corpus, tmp_path_factory, capsys):
    args = ["train", "--corpus", str(tiny_corpus), "--out", str(tmp_path_factory.mktemp("fuzz") / "r"), *QUICK]
    for name, value in flags.items():
        args += [name, value] if value != "" else [name]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors: exit 2 with a usage line
        code = exc.code
    assert_clean(code, capsys.readouterr().err)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=0, max_size=3000) | st.text(min_size=0, max_size=800).map(str.encode))
def test_random_bytes_as_a_corpus_exit_cleanly(data, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("bytes")
    corpus = folder / "corpus.txt"
    corpus.write_bytes(data)
    code = main(["train", "--corpus", str(corpus), "--out", str(folder / "r"), *QUICK])
    assert_clean(code, capsys.readouterr().err)


@pytest.mark.parametrize("flag", ["--hidden", "--embed", "--layers"])
def test_a_model_too_big_for_memory_is_refused_before_allocating(flag, tiny_corpus, tmp_path, capsys):
    code = main(["train", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "r"), *QUICK, flag, "10000000"])
    err = capsys.readouterr().err
    # Refused up front from the parameter count, or (activations) by the allocator: either way one clear line.
    assert code == 1 and ("parameters, needing" in err or "out of memory" in err) and "lower --" in err, err
    assert "Traceback" not in err
