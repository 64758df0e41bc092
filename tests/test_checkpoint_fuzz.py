"""Property-based: crafted checkpoint folders and resume flag changes never end in a traceback.

A good tiny checkpoint is copied and one of its files altered at random: config.json
fields set to odd values and types, tokenizer.json fields mangled, the safetensors header
rewritten, train_state.pt replaced by random bytes. Loading must either work or raise a
:class:`~lmgen.errors.CheckpointError`; nothing else may escape.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgen.checkpoint import load_checkpoint, load_train_state
from lmgen.cli import main
from lmgen.errors import CheckpointError

odd = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([10**7, 2**40, -(2**31), 8000]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
MODEL_KEYS = ["cell", "vocab_size", "embed", "hidden", "layers", "dropout", "tie", "window", "init_range",
              "weight_drop", "dropout_hidden", "nonsense"]
TOKENIZER_KEYS = ["format", "kind", "vocab", "options"]
settings_ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def copy_with(checkpoint, tmp_path_factory, name: str, edit):
    """A copy of the checkpoint's last/ whose JSON file ``name`` went through ``edit`` (in place)."""
    folder = tmp_path_factory.mktemp("crafted") / "c"
    shutil.copytree(checkpoint / "last", folder)
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))
    return folder


def loads_or_refuses(folder) -> None:
    try:
        load_checkpoint(folder)
    except CheckpointError:
        pass


@settings_
@given(changes=st.dictionaries(st.sampled_from(MODEL_KEYS), odd, min_size=1, max_size=3))
def test_crafted_model_configs_load_or_are_refused(changes, tiny_checkpoint, tmp_path_factory):
    folder = copy_with(tiny_checkpoint, tmp_path_factory, "config.json", lambda config: config["model"].update(changes))
    loads_or_refuses(folder)


@settings_
@given(changes=st.dictionaries(st.sampled_from(TOKENIZER_KEYS), odd, min_size=1, max_size=2))
def test_crafted_tokenizer_files_load_or_are_refused(changes, tiny_checkpoint, tmp_path_factory):
    folder = copy_with(tiny_checkpoint, tmp_path_factory, "tokenizer.json", lambda state: state.update(changes))
    loads_or_refuses(folder)


@settings_
@given(edit=st.sampled_from(["shape", "dtype", "offsets", "name", "length"]), value=odd)
def test_crafted_weight_headers_load_or_are_refused(edit, value, tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hdr") / "c"
    shutil.copytree(tiny_checkpoint / "last", folder)
    raw = (folder / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    name = sorted(k for k in header if k != "__metadata__")[0]
    if edit == "name":
        header[str(value)] = header.pop(name)
    elif edit == "length":
        n = value if isinstance(value, int) and 0 <= value < 2**64 else n + 1
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", n) + raw[8:])
        return loads_or_refuses(folder)
    else:
        header[name][{"shape": "shape", "dtype": "dtype", "offsets": "data_offsets"}[edit]] = value
    body = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + data)
    loads_or_refuses(folder)


@settings_
@given(data=st.binary(max_size=2000))
def test_random_training_states_are_refused(data, tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("state") / "c"
    shutil.copytree(tiny_checkpoint / "last", folder)
    (folder / "train_state.pt").write_bytes(data)
    with pytest.raises(CheckpointError):
        load_train_state(folder)


RESUME_FLAGS = {
    "--batch": st.sampled_from(["4", "8"]), "--bptt": st.sampled_from(["32", "16"]),
    "--optimizer": st.sampled_from(["adamw", "sgd", "ntasgd"]), "--tokenizer": st.sampled_from(["char", "word"]),
    "--lr": st.sampled_from(["0.02", "0.001"]), "--hidden": st.sampled_from(["32", "64"]),
    "--average": st.sampled_from(["none", "polyak"]), "--seed": st.sampled_from(["0", "1"]),
    "--steps": st.sampled_from(["81", "82"]), "--clip": st.sampled_from(["1.0", "0.5"]),
}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(flags=st.dictionaries(st.sampled_from(sorted(RESUME_FLAGS)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: RESUME_FLAGS[k] for k in keys})))
def test_resume_flag_changes_continue_or_refuse_in_one_line(flags, tiny_checkpoint, tmp_path_factory, capsys):
    run = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(tiny_checkpoint, run)
    args = ["train", "--resume", "--out", str(run), "--no-progress", "--steps", "81"]
    for name, value in flags.items():
        args += [name, value]
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code:
        assert code == 1 and err.strip().splitlines()[-1].startswith("lmgen: error: "), err
