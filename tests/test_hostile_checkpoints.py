"""Crafted checkpoint folders: each is refused with one clear line, fast, in bounded memory.

Every case runs the real CLI in a subprocess and measures it (tests/refusal.py): a non-zero
exit, no traceback, a last line ``lmgen: error: ...`` naming the problem, within 10 s and a
peak RSS under 500 MB (read from the kernel's rusage of that process alone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from refusal import refused


@pytest.fixture
def ckpt(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of a good checkpoint, to damage."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint / "last", folder)
    return folder


def edit_config(folder: Path, **model: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model)
    (folder / "config.json").write_text(json.dumps(config))


def test_the_good_checkpoint_samples(ckpt):
    # The control: the same command on the undamaged copy succeeds.
    done = subprocess.run([sys.executable, "-m", "lmgen", "sample", str(ckpt), "--max-new-tokens", "5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("sizes, words", [
    ({"layers": 10_000_000}, "holds 1 recurrent layers but config.json says 10000000"),
    ({"hidden": 8000, "layers": 1}, "config.json needs"),
    ({"embed": 100_000}, "config.json needs"),
    ({"vocab_size": 0}, "bad model config (vocab_size 0)"),  # found by test_checkpoint_fuzz
])
def test_a_config_bigger_than_its_weights_is_refused_before_building(ckpt, sizes, words):
    edit_config(ckpt, **sizes)
    assert words in refused("sample", ckpt)


def test_a_config_that_is_a_link_to_dev_zero_is_refused(ckpt):
    (ckpt / "config.json").unlink()
    os.symlink("/dev/zero", ckpt / "config.json")
    assert "config.json" in refused("sample", ckpt)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_a_fifo_in_the_folder_does_not_block(ckpt, name):
    (ckpt / name).unlink()
    os.mkfifo(ckpt / name)
    assert "not a regular file" in refused("sample", ckpt)


def test_a_link_out_of_the_folder_is_not_followed(ckpt, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.copy(ckpt / "tokenizer.json", outside)  # even a valid file: links may not leave the folder
    (ckpt / "tokenizer.json").unlink()
    os.symlink(outside, ckpt / "tokenizer.json")
    assert "outside its checkpoint folder" in refused("sample", ckpt)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_deeply_nested_json_is_refused(ckpt, name):
    (ckpt / name).write_text("[" * 100_000 + "]" * 100_000)
    assert "nested deeper" in refused("sample", ckpt)


def test_a_huge_weights_header_is_refused(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + data[8:])
    assert "model.safetensors is truncated" in refused("sample", ckpt)


def test_an_oversized_config_is_refused(ckpt):
    (ckpt / "config.json").write_text(" " * (2 << 20) + "{}")
    assert "limit" in refused("sample", ckpt)


def test_a_zip_bomb_training_state_is_refused_before_loading(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run)
    state = run / "last" / "train_state.pt"
    # A small archive whose directory declares a 4 GB member: torch.load would allocate it.
    with zipfile.ZipFile(state, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 1000)
    raw = bytearray(state.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (0xFFFF0000).to_bytes(4, "little")  # uncompressed size
    state.write_bytes(bytes(raw))
    assert state.stat().st_size < 2000
    line = refused("train", "--resume", "--out", run, "--steps", "100", "--no-progress")
    assert "would unpack to" in line and "train_state.pt" in line
