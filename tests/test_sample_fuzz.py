"""``mirai sample`` against a table of bad values, one option at a time: each must end in one error
line and a non-zero exit, without a traceback, and write nothing outside its own output folder
(``helpers.assert_cli_refuses``). The unchanged command must succeed, so every refusal is the
bad value's doing."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from helpers import assert_cli_refuses
from test_sampling import BASE, LABELS, interrupted_run, save_with_nan, tiny_gpt, tiny_vq

from mirai import checkpoint
from mirai.cli.main import main
from mirai.models import build_vq

NAN, INF = "nan", "inf"

# option -> [(bad value, regex the error line must match)]
BAD = {
    "--num-samples": [("0", "--num-samples must be an integer between 1 and"), ("-5", "--num-samples"),
                      (NAN, "invalid int"), ("2.5", "invalid int"), ("abc", "invalid int"),
                      ("1000000000000", "--num-samples must be an integer between 1 and 1000000")],  # no 8-TB labels
    "--per-class": [("0", "--per-class must be at least 1"), ("-1", "--per-class"), ("x", "invalid int"),
                    ("400000", r"number of images \(--classes x --per-class\) must be an integer between 1 and 1000000, "
                               "got 1200000")],
    "--batch-size": [("0", "--batch-size must be an integer at least 1"), ("-3", "--batch-size"),
                     ("1.5", "invalid int")],
    "--top-k": [("-3", "--top-k must be an integer at least 1"), ("0", "--top-k"), ("17", "--top-k .* between 1 and 16"),
                ("abc", "invalid int")],
    "--top-p": [("0", r"--top-p must be a number in \(0, 1\]"), ("-0.1", "--top-p"), ("1.5", "--top-p"),
                (NAN, "--top-p"), (INF, "--top-p"), ("abc", "invalid float")],
    "--temperature": [("-1", "--temperature must be a finite number >= 0"), (NAN, "--temperature"),
                      (INF, "--temperature"), ("abc", "invalid float"),
                      ("1e-40", "non-finite token probabilities.*temperature 1e-40.*temperature of 0")],
    "--cfg-scale": [("-1", "--cfg-scale must be a finite number >= 0"), (NAN, "--cfg-scale"), (INF, "--cfg-scale"),
                    ("-inf", "--cfg-scale"), ("x", "invalid float"), ("1e300", "non-finite token probabilities")],
    "--classes": [("abc", "--classes 'abc': give comma-separated class ids"), ("", "--classes"),
                  ("1,,2", "--classes"), ("1,2,1", "--classes '1,2,1' repeats 1: give each class once"), ("3", r"\[3\] are outside this model's 3 classes.*0..2"),
                  ("-1", r"\[-1\] are outside"), ("0,7", r"\[7\]")],
    "--guidance-interval": [("-0.1,0.5", "--guidance-interval must be"), ("0,1.5", "--guidance-interval"),
                            ("0.6,0.2", "--guidance-interval"), ("nan,1", "--guidance-interval"),
                            ("0.5", "START,END"), ("a,b", "START,END"),
                            ("0.5,0.5", "holds none of this model's decoding passes")],
    "--seed": [("-1", "--seed must be an integer between 0"), (str(2**40), "--seed"), ("abc", "invalid int")],
    "--grid-size": [("0", "--grid-size must be at least 1"), ("-2", "--grid-size")],
    "--image-size": [("0", "--image-size must be a positive"), ("7", "not a multiple of the tokenizer's"),
                     ("x", "invalid int")],
    "--image-size-eval": [("0", "--image-size-eval must be a positive"), ("-3", "--image-size-eval"),
                          ("x", "invalid int"), ("100000", "between 1 and 4096")],  # not a TB allocation after sampling
    "--device": [("tpu", "invalid choice")],
    "--precision": [("fp64", "invalid choice")],
    "--class-sampling": [("random", "invalid choice")],
}

# option -> [(file made by the fixture, regex)]: missing, wrong kind, not a checkpoint, NaN or corrupt weights
BAD_FILES = {
    "--gpt": [("missing", "does not exist"), ("notes.txt", "not a readable PyTorch file|not loaded"),
              ("vq", "holds a 'vq' model, but a 'gpt' one"), ("vq.pt", "not a LlamaGen class-conditional GPT"),
              ("nan_gpt", "GPT checkpoint .*nan_gpt holds NaN/inf weights"),
              ("nan_gpt.pt", "GPT checkpoint .*nan_gpt.pt holds NaN/inf weights"),
              ("empty_dir", "no config.json"), ("corrupt_gpt", "corrupt|truncated|checksum")],
    "--tokenizer": [("missing", "does not exist"), ("notes.txt", "not a readable PyTorch file|not loaded"),
             ("gpt", "holds a 'gpt' model, but a 'vq' one"), ("nan_vq", "VQ checkpoint .*nan_vq holds NaN/inf"),
             ("vq_other_codebook", r"GPT vocabulary \(16\) differs from the tokenizer's codebook \(32\)")],
    "--out": [("notes.txt", "is a file, not a folder"), ("notes.txt/s", r"--out \S+notes.txt/s: \S+notes.txt is a file"),
              ("dangling/s", r"--out \S+dangling/s: \S+dangling is a broken symbolic link \(to \S+nowhere\)"),
              ("dangling", r"--out \S+dangling is a broken symbolic link"),
              # "new" is missing, so ".." leads back from the folder it would become: the check made before
              # loading (which names the level without "new/..") refuses it, not the one at lock time
              ("new/../notes.txt/s", r"notes.txt/s: (?!\S*new/\.\.)\S+notes.txt is a file"),
              ("new/../dangling/s", r"dangling/s: (?!\S*new/\.\.)\S+dangling is a broken symbolic link"),
              ("a" * 300, r"cannot create \S+ \(File name too long\)"),
              # a folder holding other things (here a checkpoint): samples would be mixed into it
              ("gpt", r"--out \S+/gpt holds other files or folders \(config.json, model.safetensors\); sample into a new")],
              # all refused before any loading
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Good and bad inputs side by side; every case may write only in its own output folder."""
    root = tmp_path_factory.mktemp("fuzz")
    checkpoint.save(root / "gpt", tiny_gpt())
    checkpoint.save(root / "vq", tiny_vq())
    torch.save({"model": tiny_vq().state_dict()}, root / "vq.pt")
    torch.save({"model": tiny_gpt().state_dict()}, root / "gpt.pt")  # a LlamaGen file (its grid is not in it)
    save_with_nan(root / "nan_gpt", tiny_gpt())
    save_with_nan(root / "nan_gpt.pt", tiny_gpt(), llamagen=True)
    save_with_nan(root / "nan_vq", tiny_vq())
    torch.manual_seed(0)
    checkpoint.save(root / "vq_other_codebook", build_vq("VQ-Tiny", codebook_size=32, codebook_dim=4))
    corrupt = checkpoint.save(root / "corrupt_gpt", tiny_gpt())
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    (root / "empty_dir").mkdir()
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "dangling").symlink_to(root / "nowhere")
    return root


def command(root, out, **options):
    """``mirai sample`` on the good tiny pair, with ``options`` (``--top-k="0"`` style) replacing the defaults."""
    base = {"--gpt": root / "gpt", "--tokenizer": root / "vq", "--out": out, "--device": "cpu", "--batch-size": "2"}
    if "--num-samples" not in options:  # a grid's flag, refused beside --num-samples
        base["--per-class"] = "1"
    return ["sample"] + [f"{k}={v}" for k, v in {**base, **options}.items()]


def test_the_unchanged_command_succeeds(root):
    out = root / "out_ok"
    assert main(command(root, out)) == 0
    assert len(np.load(out / "samples.npz")["arr_0"]) == 3
    assert json.loads((out / "samples.json").read_text())["settings"]["cfg_scale"] == 2.0


def test_a_guidance_interval_without_guidance_is_noted(root, capsys):
    assert main(command(root, root / "out_interval", **{"--cfg-scale": "1", "--guidance-interval": "0,0.5"})) == 0
    assert "note: --guidance-interval has no effect at --cfg-scale 1" in capsys.readouterr().out


CASES = [(option, value, match) for option, rows in BAD.items() for value, match in rows]
FILE_CASES = [(option, name, match) for option, rows in BAD_FILES.items() for name, match in rows]


@pytest.mark.parametrize("option, value, match", CASES, ids=[f"{o}={v}" for o, v, _ in CASES])
def test_bad_values_are_refused_in_one_line(root, option, value, match):
    out = root / f"out_{option.strip('-')}_{value}"
    extra = {"--gpt": root / "gpt.pt"} if option == "--grid-size" else {}  # the grid matters for LlamaGen files
    if option == "--num-samples" or option == "--class-sampling":
        extra["--num-samples"] = "4"
    assert_cli_refuses(command(root, out, **{**extra, option: value}), root, match=match, output=out)


@pytest.mark.parametrize("option, name, match", FILE_CASES, ids=[f"{o}={n}" for o, n, _ in FILE_CASES])
def test_bad_files_are_refused_in_one_line(root, option, name, match):
    out = root / f"out_{option.strip('-')}_{name}"
    output = None if option == "--out" else out  # a refused --out FILE must not be touched either
    grid = {"--grid-size": "2"} if option == "--gpt" and name.endswith(".pt") else {}  # a .pt holds no grid
    assert_cli_refuses(command(root, out, **{option: root / name, **grid}), root, match=match, output=output)


def test_out_may_be_a_samples_folder_but_not_one_holding_anything_else(root):
    """The trainer's grids (RUN_DIR/samples, where the docs sample to) and an earlier run's outputs are
    welcome; one file of the user's own makes the folder foreign, and nothing is written to it."""
    out = root / "out_run_samples"
    out.mkdir()
    for name in ("final.png", "final.pdf", "step_0000500.png"):
        (out / name).write_bytes(b"grid")
    assert main(command(root, out)) == 0
    assert main(command(root, out)) == 0  # the same settings again: reused
    for name in ("samples.metrics.json", ".DS_Store"):  # mirai evaluate's scores beside them; a file browser's
        (out / name).write_text("{}")
    assert main(command(root, out)) == 0
    (out / "notes.md").write_text("mine\n")
    assert_cli_refuses(command(root, out, **{"--seed": "1"}), root, match=r"holds other files or folders \(notes.md\)")
    assert_cli_refuses(command(root, root / "out_empty", **{"--out": ""}), root, match="--out is empty")


def test_every_option_of_the_command_is_fuzzed():
    from mirai.cli.main import build_parser

    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    options = {o for a in sample._actions for o in a.option_strings if o.startswith("--") and a.nargs != 0}
    covered = set(BAD) | set(BAD_FILES) | {"--model", "--vq"}  # --vq: hidden alias of --tokenizer (test_hub)
    assert options - {"--help"} <= covered, options - covered


def test_llamagen_files_sample_and_an_unknown_model_name_is_refused(root):
    llamagen = {"--gpt": root / "gpt.pt", "--grid-size": "2"}
    assert main(command(root, root / "out_llamagen", **llamagen, **{"--model": "GPT-Nano"})) == 0
    out = root / "out_model"
    assert_cli_refuses(command(root, out, **llamagen, **{"--model": "GPT-Nope"}), root,
                       match="unknown GPT config 'GPT-Nope' .*choose one of", output=out)
    assert_cli_refuses(command(root, out, **llamagen, **{"--model": "GPT-B"}), root,  # 12 heads, width 64
                       match="GPT-B's 12 attention heads do not divide the file's width 64.*leave it out", output=out)


def test_a_grid_that_contradicts_a_mirai_checkpoint_is_refused(root):
    """A Mirai folder knows its grid: a different --grid-size is an error, not silently ignored."""
    out = root / "out_grid_mirai"
    assert_cli_refuses(command(root, out, **{"--grid-size": "5"}), root,
                       match="Mirai checkpoint of 2x2 tokens, not 5x5: leave out --grid-size", output=out)
    assert main(command(root, root / "out_grid_same", **{"--grid-size": "2"})) == 0  # agreeing is fine


def test_a_model_name_that_contradicts_a_mirai_checkpoint_is_refused(root):
    """A Mirai folder knows its model: --model GPT-B on it would be ignored, so it is refused."""
    from mirai.checkpoint import read_checkpoint

    out = root / "out_model_mirai"
    stored = read_checkpoint(root / "gpt").name
    assert_cli_refuses(command(root, out, **{"--model": "GPT-B"}), root,
                       match=f"Mirai checkpoint of {stored}, whose architecture is not GPT-B's: leave out --model",
                       output=out)


def test_combinations_of_two_bad_values_are_refused(root):
    """Pairs of bad values: whichever is checked first, the run still ends in one error line."""
    picks = [(o, v) for o, v, _ in CASES if o not in ("--grid-size",)][::5]
    for (o1, v1), (o2, v2) in itertools.islice(itertools.combinations(picks, 2), 0, None, 7):
        if o1 == o2:
            continue
        out = root / f"out_pair_{o1.strip('-')}_{o2.strip('-')}"
        assert_cli_refuses(command(root, out, **{o1: v1, o2: v2}), root, output=out)


def test_a_run_stopped_before_its_first_batch_does_not_block_the_corrected_one(tmp_path, monkeypatch):
    # e.g. ended by a value that overflowed on the first pass: its parts folder holds a record and no samples
    from mirai.sampling.pipeline import SampleSettings, sample_to_npz

    gpt, vq, out = tiny_gpt(), tiny_vq(), tmp_path / "samples.npz"
    interrupted_run(monkeypatch, gpt, vq, out, batches=0, settings=SampleSettings(cfg_scale=1.0, temperature=0.5))
    assert sample_to_npz(gpt, vq, LABELS, out, **BASE) == out
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["temperature"] == 1.0


@pytest.mark.parametrize("options, match", [
    ({"--num-samples": "4", "--classes": "1"}, "--classes shape a grid .*; --num-samples draws its labels from every"),
    ({"--num-samples": "4", "--per-class": "3"}, "--per-class shape a grid"),
    ({"--class-sampling": "uniform"}, "--class-sampling sets how --num-samples draws its labels; a grid .* leave it out"),
])
def test_a_flag_of_the_other_mode_is_refused_not_ignored(root, options, match):
    # Grid mode (--classes, --per-class) and evaluation mode (--num-samples, --class-sampling) each ignored the
    # other's flags in silence.
    out = root / f"out_mode_{'_'.join(options)}"
    assert_cli_refuses(command(root, out, **options), root, output=out, match=match)


def test_a_tokenizer_other_than_the_training_codes_one_is_refused(stores, tmp_path, capsys):
    """Same codebook size, other weights: the tokens would decode into the wrong patches. The GPT's training store
    records its tokenizer's hash; `mirai sample` and `mirai serve` compare it, raw or EMA weights alike."""
    from helpers import make_cfg

    from mirai.errors import ConfigError
    from mirai.serve.app import load_generator
    from mirai.training import train

    ckpt = train(make_cfg(stores, tmp_path / "run", steps=1)).checkpoint
    torch.manual_seed(1)
    other = checkpoint.save(tmp_path / "other_vq", build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4).eval(),
                            ema=build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4).eval())
    argv = ["sample", "--gpt", str(ckpt), "--num-samples", "2", "--device", "cpu", "--out"]
    assert main(argv + [str(tmp_path / "wrong"), "--tokenizer", str(other)]) == 1
    assert f"tokenizer {other} is not the one {ckpt} was trained with" in capsys.readouterr().err
    assert not (tmp_path / "wrong" / "samples.npz").exists()
    with pytest.raises(ConfigError, match=f"--tokenizer {stores / 'vq'}"):
        load_generator(ckpt, other, device="cpu")
    # The tokenizer that made the codes samples as before, also when it holds EMA weights, which sampling prefers
    # while the codes were extracted with its raw ones.
    from mirai.data.codes import load_vq

    with_ema = checkpoint.save(tmp_path / "vq_with_ema", load_vq(stores / "vq"),
                               ema=build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4).eval())
    for name, tokenizer in (("right", stores / "vq"), ("right_ema", with_ema)):
        assert main(argv + [str(tmp_path / name), "--tokenizer", str(tokenizer)]) == 0, capsys.readouterr().err
    # The record is the checkpoint's own, not whatever store its (perhaps relative) data.codes finds from here.
    from mirai.data.codes import extract
    from mirai.data.folders import ImageFolder
    from mirai.data.views import ViewSpec

    extract(load_vq(other), ImageFolder.scan(stores / "val"), ViewSpec("ten_crop", 8), tmp_path / "elsewhere",
            tokenizer_path=other, progress=False)
    (ckpt / "train_config.yaml").write_text(f"data: {{codes: {tmp_path / 'elsewhere'}}}\n")
    assert main(argv + [str(tmp_path / "moved"), "--tokenizer", str(stores / "vq")]) == 0, capsys.readouterr().err
