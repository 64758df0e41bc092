"""Training from a checkpoint (lmgen/finetune.py): --init-from, --extend-vocab, --freeze-embeddings,
and AWD-LSTM's fine-tune pass, --resume --finetune."""

import dataclasses
import hashlib
import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmgen import corpora
from lmgen.checkpoint import load_checkpoint, load_train_state
from lmgen.cli import main
from lmgen.config import ModelConfig, TrainConfig
from lmgen.data import StreamBatcher, encode_split
from lmgen.errors import ConfigError
from lmgen.finetune import Parent, describe_unseen, finetune_settings, unseen_symbols
from lmgen.train import train

NEW = "ä@Z"  # in the new corpus, never in the parent's; "@" and "Z" sort among its ids
QUIET = ["--threads", "1", "--no-progress"]


def quiet(msg):
    pass


@pytest.fixture(scope="module")
def new_corpus(tiny_corpus, tmp_path_factory):
    """The parent's text with three characters it never saw."""
    path = tmp_path_factory.mktemp("new-corpus") / "new.txt"
    path.write_text(tiny_corpus.read_text(encoding="utf-8").replace("cat", "cät").replace("dog", "Zog @"),
                    encoding="utf-8")
    return path


def child_settings(parent, corpus, out, model_given=None, **train_given):
    given = dict(init_from=str(parent), corpus=str(corpus), batch=4, bptt=16, steps=2, eval_every=2, log_every=1,
                 threads="1", progress=False, out=str(out))
    given.update(train_given)
    return finetune_settings(model_given or {}, given)


def test_extend_vocab_keeps_every_old_row_bit_identical(tiny_checkpoint, new_corpus, tmp_path):
    cfg, model_cfg = child_settings(tiny_checkpoint, new_corpus, tmp_path / "child", extend_vocab=True)
    logs = []
    parent = Parent.load(cfg, model_cfg, corpora.resolve(str(new_corpus)), logs.append)
    old, new = parent.checkpoint.tokenizer, parent.tokenizer
    assert set(new.pieces) - set(old.pieces) == set(NEW) and set(old.pieces) <= set(new.pieces)
    child = parent.child(dataclasses.replace(model_cfg, vocab_size=new.vocab_size), seed=cfg.seed)
    before, after = parent.checkpoint.model.state_dict(), child.state_dict()
    for name, tensor in before.items():
        if tensor.shape == after[name].shape:
            assert torch.equal(after[name], tensor), name
            continue
        assert name in ("embedding.weight", "decoder.weight", "decoder.bias")
        for i, piece in enumerate(old.pieces):  # each symbol's row, bit for bit, at its new id
            assert torch.equal(after[name][new.pieces.index(piece)], tensor[i]), (name, piece)
    added = [new.pieces.index(symbol) for symbol in NEW]
    rows = after["embedding.weight"][added]
    assert not torch.equal(rows[0], rows[1])  # the noise tells them apart
    # The old symbols' logits are the parent's; each new symbol starts below probability 1/V_old.
    text = "The cat sat on the mat."
    with torch.no_grad():
        parent_logits = parent.checkpoint.model(torch.tensor([old.encode(text)]))[0]
        child_logits = child.eval()(torch.tensor([new.encode(text)]))[0]
    keep = torch.tensor([new.pieces.index(piece) for piece in old.pieces])
    torch.testing.assert_close(child_logits[..., keep], parent_logits, rtol=0, atol=1e-5)
    assert child_logits.softmax(-1)[..., added].max() < 1 / old.vocab_size
    line = next(line for line in logs if "never saw" in line)
    assert line.startswith("--extend-vocab: 3 characters") and all(repr(s) in line for s in NEW)


def test_unseen_symbols_are_counted_and_listed_within_bounds(tiny_checkpoint):
    tok = load_checkpoint(tiny_checkpoint).tokenizer
    text = "".join(chr(0x4E00 + i) * (i + 1) for i in range(25)) + "The cat sat."
    pieces = [text[:101], text[101:250], text[250:]]  # cut inside runs of one character
    counts, total = unseen_symbols(tok, pieces)
    assert counts == Counter(ch for ch in text if ch not in tok.pieces) and total == len(text)
    assert len(counts) == 25
    line = describe_unseen(counts, total)
    assert line.startswith("25 characters the parent never saw (325 occurrences")
    assert line.count("' x") == 20 and line.endswith("and 5 more")
    assert f"{chr(0x4E00 + 24)!r} x25" in line  # the most frequent first


def test_without_extend_vocab_unseen_characters_become_unk_with_a_warning(tiny_checkpoint, new_corpus, tmp_path,
                                                                         capsys):
    out = tmp_path / "child"
    assert main(["train", "--init-from", str(tiny_checkpoint), "--corpus", str(new_corpus), "--steps", "1",
                 "--batch", "4", "--bptt", "16", "--eval-every", "1", "--out", str(out), *QUIET]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "never saw" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 3 characters")
    assert all(repr(s) in warnings[0] for s in NEW) and "<unk>" in warnings[0]
    child, parent = load_checkpoint(out / "last"), load_checkpoint(tiny_checkpoint)
    assert child.tokenizer.pieces == parent.tokenizer.pieces
    assert child.tokenizer.encode(NEW) == [child.tokenizer.unk_id] * 3


def test_init_from_first_loss_on_the_parents_corpus_equals_the_parents(tiny_checkpoint, tiny_corpus, tmp_path):
    out = tmp_path / "child"
    cfg, model_cfg = child_settings(tiny_checkpoint, tiny_corpus, out, batch=4, bptt=32, steps=1, eval_every=1)
    train(cfg, model_cfg, log=quiet)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(row for row in rows if row["kind"] == "train")
    # Oracle: the parent itself, on the first window of the same B x T layout, from the zero state.
    parent = load_checkpoint(tiny_checkpoint)
    tokens = encode_split(corpora.resolve(str(tiny_corpus)), parent.tokenizer, "train").tokens
    x, y = StreamBatcher(tokens, 4, 32).window(0)
    with torch.no_grad():
        logits, _ = parent.model(x)
    expected = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1)).item()
    assert first["step"] == 1 and first["train_loss"] == expected, (first["train_loss"], expected)


@pytest.mark.parametrize("flags, mine, theirs", [
    (["--hidden", "64"], "--hidden 64", "--hidden 32"),
    (["--embed", "32"], "--embed 32", "--embed 16"),
    (["--layers", "2"], "--layers 2", "--layers 1"),
    (["--cell", "gru"], "--cell gru", "--cell lstm"),
    (["--tie"], "--tie on", "--tie off"),
])
def test_model_flags_that_change_the_parents_architecture_are_refused(tiny_checkpoint, tiny_corpus, tmp_path,
                                                                     capsys, flags, mine, theirs):
    out = tmp_path / "child"
    code = main(["train", "--init-from", str(tiny_checkpoint), "--corpus", str(tiny_corpus), *flags,
                 "--out", str(out), *QUIET])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"{mine} conflicts with the parent" in err and f"which has {theirs}" in err
    assert not out.exists()


def test_unset_flags_take_the_parents_values_and_the_lr_its_tenth(tiny_checkpoint, tiny_corpus, tmp_path):
    cfg, model_cfg = child_settings(tiny_checkpoint, tiny_corpus, tmp_path / "c", {"dropout": 0.2})
    parent = json.loads((tiny_checkpoint / "best" / "config.json").read_text())
    assert (model_cfg.embed, model_cfg.hidden, model_cfg.layers, model_cfg.dropout) == (16, 32, 1, 0.2)
    assert cfg.lr == pytest.approx(parent["train"]["lr"] / 2) and cfg.optimizer == parent["train"]["optimizer"]
    assert child_settings(tiny_checkpoint, tiny_corpus, tmp_path / "c", lr=0.5)[0].lr == 0.5
    with pytest.raises(ConfigError, match="--optimizer sgd differs from the parent's adamw"):
        child_settings(tiny_checkpoint, tiny_corpus, tmp_path / "c", optimizer="sgd")
    with pytest.raises(ConfigError, match="--tokenizer word conflicts with the parent"):
        child_settings(tiny_checkpoint, tiny_corpus, tmp_path / "c", tokenizer="word")
    with pytest.raises(ConfigError, match="lies inside --out"):
        child_settings(tiny_checkpoint, tiny_corpus, tiny_checkpoint)


def test_init_from_with_resume_and_finetune_without_resume_are_refused(tiny_checkpoint, tiny_corpus, capsys):
    for flags in (["--init-from", str(tiny_checkpoint), "--resume"], ["--finetune"]):
        assert main(["train", "--corpus", str(tiny_corpus), "--out", str(tiny_checkpoint), *flags, *QUIET]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("use one or the other" in err or "use it with --resume" in err)
    with pytest.raises(ConfigError, match="--extend-vocab adds rows"):
        TrainConfig(extend_vocab=True)


@pytest.mark.parametrize("tie", [False, True])
def test_freeze_embeddings_leaves_the_embedding_unchanged(tiny_corpus, tmp_path, tie):
    parent_out = tmp_path / "parent"
    train(TrainConfig(corpus=str(tiny_corpus), batch=4, bptt=16, steps=2, eval_every=2, threads="1",
                      progress=False, out=str(parent_out)), ModelConfig(embed=16, hidden=16, tie=tie), log=quiet)
    out = tmp_path / "child"
    logs = []
    cfg, model_cfg = child_settings(parent_out, tiny_corpus, out, freeze_embeddings=True, weight_decay=0.1,
                                    lr=0.05, steps=4, eval_every=4)
    train(cfg, model_cfg, log=logs.append)
    before, after = load_checkpoint(parent_out / "best").model, load_checkpoint(out / "last").model
    assert torch.equal(after.embedding.weight, before.embedding.weight)  # weight decay did not touch it either
    assert not torch.equal(after.decoder.bias, before.decoder.bias)  # the rest trained
    assert not torch.equal(after.rnn.weight_hh_l0, before.rnn.weight_hh_l0)
    assert torch.equal(after.decoder.weight, before.decoder.weight) == tie
    assert any("both stay fixed" in line for line in logs) == tie


def test_config_json_records_the_parent_and_resume_keeps_it(tiny_checkpoint, new_corpus, tmp_path):
    out = tmp_path / "child"
    assert main(["train", "--init-from", str(tiny_checkpoint), "--corpus", str(new_corpus), "--extend-vocab",
                 "--steps", "2", "--batch", "4", "--bptt", "16", "--eval-every", "2", "--out", str(out), *QUIET]) == 0
    weights = (tiny_checkpoint / "best" / "model.safetensors").read_bytes()
    for resumed in (False, True):
        if resumed:
            # the same flags again (a reused --config names the run's own parent): allowed
            assert main(["train", "--resume", "--init-from", str(tiny_checkpoint), "--extend-vocab", "--out", str(out),
                         "--steps", "3", *QUIET]) == 0
        train_cfg = json.loads((out / "last" / "config.json").read_text())["train"]
        parent = train_cfg["parent"]
        assert parent["weights_sha256"] == hashlib.sha256(weights).hexdigest()
        assert parent["checkpoint"] == str((tiny_checkpoint / "best").resolve())
        assert parent["init_from"] == train_cfg["init_from"] == str(tiny_checkpoint)
        assert parent["added_symbols"] == 3 and parent["step"] == 80
    assert load_checkpoint(out).tokenizer.vocab_size == load_checkpoint(tiny_checkpoint).tokenizer.vocab_size + 3


def test_resume_finetune_restarts_from_best_with_averaged_sgd(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    run = dict(corpus=str(tiny_corpus), batch=4, bptt=16, steps=5, eval_every=5, log_every=1, lr=5e-3, warmup=2,
               schedule="constant", seed=3, threads="1", progress=False, out=str(out))
    model_cfg = ModelConfig(embed=8, hidden=16)  # no dropout: the oracle below needs no random masks
    train(TrainConfig(**run), model_cfg, log=quiet)
    # A huge rate spoils the next 5 steps, so best/ (step 5) and last/ (step 10) differ.
    train(TrainConfig(**{**run, "steps": 10, "lr": 1.0, "resume": True}), model_cfg, log=quiet)
    assert json.loads((out / "best" / "config.json").read_text())["metrics"]["step"] == 5
    best, last = load_checkpoint(out / "best"), load_checkpoint(out / "last")
    assert not torch.equal(best.model.decoder.weight, last.model.decoder.weight)

    assert main(["train", "--resume", "--finetune", "--out", str(out), "--steps", "12", "--lr", "0.5", *QUIET]) == 0
    assert "fine-tune pass (AWD-LSTM): from best/ (step 5" in capsys.readouterr().err

    # Oracle: two plain SGD steps (clip 1) from best/'s weights on the first two windows, from the zero state.
    model, (state, iterates) = best.model.train(), (None, [])
    tokens = encode_split(corpora.resolve(str(tiny_corpus)), best.tokenizer, "train").tokens
    batcher = StreamBatcher(tokens, 4, 16)
    for k in range(2):
        x, y = batcher.window(k)
        logits, state = model(x, state)
        F.cross_entropy(logits.flatten(0, 1), y.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
                p.grad = None
        state = tuple(s.detach() for s in state)
        iterates.append({name: p.detach().clone() for name, p in model.named_parameters()})
    saved, raw = load_file(str(out / "last" / "model.safetensors")), load_train_state(out / "last")
    for name, p in iterates[1].items():
        torch.testing.assert_close(raw["average"]["weights"][name], p, rtol=0, atol=1e-6)
        # Polyak from the pass's first step: the saved weights are the mean of its two iterates.
        torch.testing.assert_close(saved[name], (iterates[0][name] + p) / 2, rtol=0, atol=1e-6)
    assert (raw["average"]["started_at"], raw["average"]["count"], raw["average"]["trigger"]["fired_at"]) == (10, 2, 10)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "finetune"] == [10]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 13))  # the metrics continue
    config = json.loads((out / "last" / "config.json").read_text())["train"]
    assert (config["optimizer"], config["average"], config["schedule"]) == ("ntasgd", "none", "constant")

    # A plain --resume afterwards continues the pass's average; it does not start another pass.
    assert main(["train", "--resume", "--out", str(out), "--steps", "13", *QUIET]) == 0
    average = load_train_state(out / "last")["average"]
    assert (average["started_at"], average["count"]) == (10, 3)
    assert not json.loads((out / "last" / "config.json").read_text())["train"]["finetune"]


def test_finetune_refuses_an_adamw_run_without_lr_and_a_spent_budget(tiny_checkpoint, capsys):
    assert main(["train", "--resume", "--finetune", "--out", str(tiny_checkpoint), *QUIET]) == 1
    assert "this run trained with adamw" in capsys.readouterr().err
    assert main(["train", "--resume", "--finetune", "--out", str(tiny_checkpoint), "--lr", "1", *QUIET]) == 1
    err = capsys.readouterr().err
    assert "its --steps budget is spent" in err and len(err.strip().splitlines()) == 1


def test_a_word_parent_keeps_its_tokenizer_and_reports_the_unk_rate(tiny_corpus, new_corpus, tmp_path):
    parent_out = tmp_path / "parent"
    train(TrainConfig(corpus=str(tiny_corpus), tokenizer="word", batch=4, bptt=16, steps=2, eval_every=2,
                      threads="1", progress=False, out=str(parent_out)), ModelConfig(embed=8, hidden=16), log=quiet)
    with pytest.raises(ConfigError, match="--extend-vocab is for char tokenizers"):
        child_settings(parent_out, new_corpus, tmp_path / "child", extend_vocab=True)
    cfg, model_cfg = child_settings(parent_out, new_corpus, tmp_path / "child")
    assert cfg.tokenizer == "word"
    logs = []
    train(cfg, model_cfg, log=logs.append)
    tok = load_checkpoint(parent_out).tokenizer
    assert load_checkpoint(tmp_path / "child").tokenizer.pieces == tok.pieces
    # Oracle: the unknown words of each training document, counted one by one; [END] ends each.
    corpus = corpora.resolve(str(new_corpus))
    unknown = sum(tok.encode(text).count(tok.unk_id) for text, _ in corpus.pieces("train"))
    total = len(encode_split(corpus, tok, "train"))
    assert unknown > 0
    line = next(line for line in logs if "<unk>" in line)
    assert f"{unknown / total:.2%} of new.txt's training tokens are <unk> ({unknown:,} of {total:,})" in line
