import json
import os
import pickle
import warnings

import pytest
import torch
from helpers import assert_cli_refuses

from mirai import checkpoint
from mirai.convert import gpt_from_llamagen_state, load_module, read_llamagen
from mirai.errors import CheckpointError, ConfigError
from mirai.models import GPT, VQModel, build_gpt, gpt_args
from mirai.models.fashion_classifier import FashionClassifier
from mirai.models.fashion_encoder import FashionEncoderArgs, FashionEncoderNet
from mirai.models.vq import vq_args


def nano(**kw):
    return build_gpt("GPT-Nano", vocab_size=40, grid_size=4, num_classes=5, **kw)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_with_ema_and_config(tmp_path):
    model, ema = nano(), nano()
    checkpoint.save(tmp_path / "ck", model, ema=ema, meta={"step": 3})
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "ema.safetensors", "model.safetensors"]
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["kind"] == "gpt" and config["name"] == "GPT-Nano" and config["meta"] == {"step": 3}
    assert same_weights(checkpoint.load(tmp_path / "ck", GPT), model)
    assert same_weights(checkpoint.load(tmp_path / "ck", GPT, use_ema=True), ema)
    assert not checkpoint.load(tmp_path / "ck", GPT).training
    with pytest.raises(TypeError, match="cls is the model class to build .*not 'GPT'"):
        checkpoint.load(tmp_path / "ck", "GPT")


def test_overwrite_is_atomic_and_failure_keeps_old(tmp_path, monkeypatch):
    first = nano()
    checkpoint.save(tmp_path / "ck", first)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "ck", nano())
    monkeypatch.undo()
    assert same_weights(checkpoint.load(tmp_path / "ck", GPT), first)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp dirs left behind


def test_pickle_bomb_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Bomb()}, f)
    with pytest.raises(CheckpointError, match="was not loaded: it (holds pickled|is corrupt)"):
        read_llamagen(path)
    assert not marker.exists()


def test_corrupt_files_give_clear_errors(tmp_path, monkeypatch):
    checkpoint.save(tmp_path / "ck", nano())
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="model.safetensors does not match the checksum"):
        checkpoint.load(tmp_path / "ck", GPT)
    monkeypatch.setenv(checkpoint.VERIFY_ENV, "0")  # without the checksum, the reader itself says so
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "ck", GPT)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not loaded: it is corrupt"):
        read_llamagen(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere", GPT)


def test_a_deleted_ema_file_is_refused_not_replaced_by_the_raw_weights(tmp_path, monkeypatch):
    model = nano()
    checkpoint.save(tmp_path / "ck", model, ema=nano())
    (tmp_path / "ck" / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors is missing, though config.json records it"):
        load_module(tmp_path / "ck", "gpt")  # prefers the EMA weights, so it would sample the raw ones
    with pytest.raises(CheckpointError, match="ema.safetensors is missing"):
        checkpoint.load(tmp_path / "ck", GPT)  # even when the raw weights are asked for: the copy is incomplete
    monkeypatch.setenv(checkpoint.VERIFY_ENV, "0")  # the documented way to load what is there
    assert same_weights(checkpoint.load(tmp_path / "ck", GPT), model)
    checkpoint.save(tmp_path / "plain", model)  # saved without EMA: nothing is missing
    assert checkpoint.read_checkpoint(tmp_path / "plain").ema is None


def test_a_run_directory_given_as_a_checkpoint_names_its_checkpoints(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"run is a training run directory, not a checkpoint, and .* holds none"):
        load_module(tmp_path / "run", "gpt")
    for name in ("step_0000002", "step_0000004", "step_0000006", "best"):
        checkpoint.save(tmp_path / "run" / "checkpoints" / name, nano())
    listed = r"give one of .*checkpoints/\{step_0000004, step_0000006, best \(lowest validation NLL\)\}"
    with pytest.raises(CheckpointError, match=r"run is a training run directory, not a checkpoint: " + listed):
        load_module(tmp_path / "run", "gpt")
    with pytest.raises(CheckpointError, match=r"checkpoints is a folder of checkpoints, not a checkpoint: " + listed):
        load_module(tmp_path / "run" / "checkpoints", "gpt")


def test_mismatched_weights_list_the_keys(tmp_path):
    model = nano()
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["norm.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \['norm.weight'\].*unexpected keys \['extra.weight'\]"):
        checkpoint.load_state_dict_checked(nano(), state)
    with pytest.raises(CheckpointError, match="tok_embeddings.weight: checkpoint"):
        checkpoint.load_state_dict_checked(nano(), build_gpt("GPT-Nano", vocab_size=41, grid_size=4,
                                                             num_classes=5).state_dict())


@pytest.mark.parametrize("container", ["model", "module", "state_dict", "bare", "ddp", "compiled"])
def test_llamagen_containers_load_strictly(tmp_path, container):
    model = nano()
    state = dict(model.state_dict())
    state["freqs_cis"] = torch.zeros(17, 16, 2)  # stray buffer some LlamaGen files carry
    if container == "ddp":
        payload = {"model": {f"module.{k}": v for k, v in state.items()}}
    elif container == "compiled":
        payload = {"model": {f"_orig_mod.{k}": v for k, v in state.items()}, "ema": state}
    elif container == "bare":
        payload = state
    else:
        payload = {container: state, "optimizer": {}, "steps": 10}
    torch.save(payload, tmp_path / "c2i.pt")
    ckpt = read_llamagen(tmp_path / "c2i.pt", grid_size=4)
    assert ckpt.kind == "gpt" and ckpt.name == "GPT-Nano"
    assert same_weights(ckpt.build(GPT), model)
    assert (ckpt.ema is not None) == (container == "compiled")
    assert same_weights(load_module(tmp_path / "c2i.pt", "gpt", grid_size=4), model)
    # LlamaGen's released files hold "model" only: what was loaded is said, not what was preferred
    # (a bare state dict does not say which it holds)
    which = "EMA" if container == "compiled" else "unlabelled" if container == "bare" else "raw"
    assert load_module(tmp_path / "c2i.pt", "gpt", grid_size=4).loaded_weights == which
    assert load_module(tmp_path / "c2i.pt", "gpt", prefer_ema=False, grid_size=4).loaded_weights == (
        "unlabelled" if container == "bare" else "raw")


def test_llamagen_gpt_b_shapes_infer_the_config():
    with torch.device("meta"):
        state = build_gpt("GPT-B").state_dict()
    with torch.device("meta"):
        model = gpt_from_llamagen_state(state, grid_size=16)
    assert model.name == "GPT-B" and model.args.num_classes == 1000 and model.args.vocab_size == 16384


@pytest.mark.parametrize("content", [b"hello\n", b"e", b"\x80\x02}q\x00X", b"\x80\x05\x95\xff\xff", b"(I1\n", b"]q"] +
                         [bytes([first]) + b"\x00" * 7 for first in range(256)])
def test_any_bytes_in_a_pt_file_raise_a_checkpoint_error(tmp_path, content):
    """Text and pickle fragments make torch.load's unpickler fail with KeyError, IndexError and more."""
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pt (is not a readable PyTorch file|was not loaded)"):
        checkpoint.read_torch_file(path)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("payload", [{"a": [1, 2]}, {"model": {"w": set()}}])
def test_a_plain_pickle_is_refused_with_only_our_error(tmp_path, payload, protocol):
    """pickle.dump's protocol 4 made torch warn about the protocol before the error was raised;
    protocols 1-3 were called corrupt."""
    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="weights.pt was not loaded"):
            checkpoint.read_torch_file(path)


@pytest.mark.parametrize("kind", ["gpt", "vq"])
@pytest.mark.parametrize("state", [
    {"tok_embeddings.weight": torch.zeros(5), "cls_embedding.embedding_table.weight": torch.zeros(3, 4),
     "layers.0.attention.wqkv.weight": torch.zeros(12, 4)},
    {"tok_embeddings.weight": torch.zeros(8, 4), "cls_embedding.embedding_table.weight": torch.zeros(()),
     "layers.0.attention.wqkv.weight": torch.zeros(12, 4)},
    {"quantize.embedding.weight": torch.zeros(7), "encoder.conv_in.weight": torch.zeros(4, 3, 3, 3),
     "encoder.conv_out.weight": torch.zeros(8, 4, 1, 1), "encoder.conv_blocks.0.res.0.conv1.weight": torch.zeros(4)},
    {"quantize.embedding.weight": torch.zeros(16, 8), "encoder.conv_in.weight": torch.zeros(4),
     "encoder.conv_out.weight": torch.zeros(8, 4, 1, 1), "encoder.conv_blocks.0.res.0.conv1.weight": torch.zeros(())},
])
def test_weights_of_the_wrong_shapes_in_a_pt_are_a_checkpoint_error(tmp_path, kind, state):
    torch.save({"model": state}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="odd.pt|not a LlamaGen"):
        read_llamagen(tmp_path / "odd.pt", kind=kind, grid_size=2)


@pytest.mark.parametrize("kind, args, right, wrong", [
    ("gpt", gpt_args("GPT-Nano", vocab_size=16, grid_size=2, num_classes=3), "GPT-Nano", "GPT-Micro"),
    ("vq", vq_args("VQ-Tiny", codebook_size=16), "VQ-Tiny", "VQ-S2"),
])
def test_a_checkpoint_of_an_unregistered_name_is_matched_to_names_by_its_shape(tmp_path, kind, args, right, wrong):
    """A module built from bare args records its class name: the right --model is accepted, another refused."""
    module = (GPT if kind == "gpt" else VQModel)(args)
    checkpoint.save(tmp_path / "ck", module)
    assert checkpoint.read_checkpoint(tmp_path / "ck").name == kind.upper()
    assert same_weights(load_module(tmp_path / "ck", kind, name=right), module)
    refused = f"Mirai checkpoint of {kind.upper()}, whose architecture is not {wrong}'s: leave out --model"
    with pytest.raises(CheckpointError, match=refused):
        load_module(tmp_path / "ck", kind, name=wrong)
    with pytest.raises(CheckpointError, match="not GPT-Unknown's"):
        load_module(tmp_path / "ck", kind, name="GPT-Unknown")


def test_a_pt_without_the_gpt_keys_is_named_in_the_error(tmp_path):
    torch.save({"model": {"layers.0.attention.wqkv.weight": torch.zeros(12, 4)}}, tmp_path / "g.pt")
    named = f"{tmp_path / 'g.pt'}: not a LlamaGen .* 'tok_embeddings.weight' is missing"
    with pytest.raises(CheckpointError, match=named):
        read_llamagen(tmp_path / "g.pt", kind="gpt", grid_size=2)


STORED = {"gpt": (GPT, nano), "vq": (VQModel, lambda: VQModel(vq_args("VQ-Tiny", codebook_size=16))),
          "fashion_encoder": (FashionEncoderNet, lambda: FashionEncoderNet(FashionEncoderArgs(dim=32, width=16))),
          "fashion_classifier": (FashionClassifier, lambda: FashionClassifier(widths=(4, 8, 8), feature_dim=8))}


@pytest.mark.parametrize("kind", sorted(STORED))
@pytest.mark.parametrize("edit, named", [
    (lambda args: {f"{k}_typo" if i == 0 else k: v for i, (k, v) in enumerate(args.items())},
     r"args: unknown key\(s\) \['\w+_typo'\]; valid keys are \["),
    (lambda args: {**args, next(k for k, v in args.items() if type(v) is int): "four"},
     r"args\.\w+: expected an integer, got 'four'"),
    (lambda args: [args], r"args: expected a mapping of model settings"),
])
def test_a_bad_key_or_value_in_a_stored_config_is_a_config_error_naming_the_file(tmp_path, kind, edit, named):
    """A config.json from another Mirai version, or edited by hand, raised a bare TypeError from the args class."""
    cls, make = STORED[kind]
    path = checkpoint.save(tmp_path / "ck", make())
    config = json.loads((path / "config.json").read_text())
    config["args"] = edit(config["args"])
    (path / "config.json").write_text(json.dumps(config))  # config.json records no checksum of itself
    error = f"{path / 'config.json'}: {named}.*written by another version of Mirai.*or the file was edited"
    with pytest.raises(ConfigError, match=error):
        checkpoint.load(path, cls)
    if kind in ("gpt", "vq"):
        with pytest.raises(ConfigError, match=error):
            load_module(path, kind)


@pytest.mark.parametrize("key, value", [("n_layer", 0), ("n_head", 0), ("dim", -128), ("n_kv_head", 0),
                                        ("norm_eps", -1.0), ("rope_base", 0.0)])
def test_an_inconsistent_stored_config_is_a_config_error_naming_the_file(tmp_path, key, value):
    path = checkpoint.save(tmp_path / "ck", nano())
    config = json.loads((path / "config.json").read_text())
    config["args"][key] = value  # well typed, refused by GPTArgs' own check (before anything divides by it)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"{path / 'config.json'}: {key} must be positive, got {value}. The"):
        load_module(path, "gpt")
    if key != "n_layer":
        return
    assert_cli_refuses(["sample", "--gpt", str(path), "--tokenizer", "fashion/vq8", "--out", str(tmp_path / "out")],
                       tmp_path, match="config.json: n_layer must be positive")


@pytest.mark.parametrize("name", ["ema.safetensors", "model.safetensors", "config.json"])
def test_a_file_of_a_mirai_checkpoint_is_refused_naming_its_folder(tmp_path, name):
    """It was read as a LlamaGen .pt, and the user told to pass --grid-size."""
    path = checkpoint.save(tmp_path / "ck", nano(), ema=nano())
    folder = f"{path / name} is a file of the Mirai checkpoint {path}: give that folder instead"
    for load in (lambda: load_module(path / name, "gpt"), lambda: load_module(path / name, "gpt", grid_size=4),
                 lambda: read_llamagen(path / name), lambda: checkpoint.load(path / name, GPT)):
        with pytest.raises(CheckpointError, match=folder):
            load()
    assert_cli_refuses(["sample", "--gpt", str(path / name), "--tokenizer", "fashion/vq8",
                        "--out", str(tmp_path / "out")], tmp_path, match=folder)
