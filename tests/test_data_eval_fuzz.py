"""Bad values for every option of `mirai extract`, `mirai data check` and `mirai evaluate` (all its
actions): each must end in one error line and a non-zero exit status, with no traceback and
nothing written. The table is per option: zero, negative, NaN, infinity, wrong type, a missing
file, a file of the wrong kind. Nothing here loads the Inception network or trains anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_cli_refuses
from mirai import checkpoint
from mirai.data.options import check_output_file
from mirai.errors import ConfigError
from mirai.evaluation import FeatureSet, write_reference
from mirai.models import build_gpt, build_vq


@pytest.fixture(scope="module")
def work(stores, tmp_path_factory):
    """A private copy of the tiny stores plus files of every wrong kind; tests only read it."""
    root = tmp_path_factory.mktemp("fuzz")
    for name in ("train", "vq", "codes_train"):
        shutil.copytree(stores / name, root / name)
    (root / "notes.txt").write_text("not a checkpoint, not an npz\n")
    (root / "notes.pth").write_text("not a pickle\n")
    (root / "empty").mkdir()
    checkpoint.save(root / "gpt", build_gpt("GPT-Nano", vocab_size=64, grid_size=4, num_classes=3))
    torch.manual_seed(1)
    checkpoint.save(root / "other_vq", build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "samples.npz", arr_0=images, labels=np.arange(6) % 10)
    np.savez(root / "one.npz", arr_0=images[:1])
    np.savez(root / "no_images.npz", arr_0=images[:0])
    np.savez(root / "size28.npz", arr_0=images[:, :28, :28])  # Fashion-MNIST's own size, not the evaluator's
    np.savez(root / "float.npz", arr_0=images.astype(np.float32) / 255)
    np.savez(root / "grey.npz", arr_0=images[..., 0])
    np.savez(root / "pickled.npz", arr_0=np.array([{"x": 1}], dtype=object))
    np.savez(root / "float_labels.npz", arr_0=images, labels=np.linspace(0, 1, 6))
    np.savez(root / "pickled_meta.npz", mu=np.zeros(2), sigma=np.eye(2), meta=np.array([{}], dtype=object))
    np.savez(root / "mu_only.npz", mu=np.zeros(2))
    np.save(root / "images.npy", images)
    stats = FeatureSet.from_features({"pool": rng.standard_normal((6, 128))})
    write_reference(root / "ref.npz", {"fashion": stats}, {}, images=images)
    # Stores whose arrays break what their manifest promises.
    for name, edit in (("ids_store", "codes"), ("labels_store", "labels")):
        shutil.copytree(root / "codes_train", root / name)
        if edit == "codes":
            codes = np.load(root / name / "codes.npy", mmap_mode="r+")
            codes[0, 0, 0, 0] = 999
            codes.flush()
        else:
            np.save(root / name / "labels.npy", np.full(24, 5, np.int64))
    # Class folders holding one image that has no faithful 8-bit RGB form.
    odd = {"float_range": Image.fromarray(np.full((8, 8), 2.0, np.float32)),
           "int32_range": Image.fromarray(np.full((8, 8), 70000, np.int32)),
           "lab": Image.new("LAB", (8, 8), (50, 10, 10))}
    for name, image in odd.items():
        (root / name / "c").mkdir(parents=True)
        image.save(root / name / "c" / "odd.tiff")
    return root


def replace(argv: list[str], option: str, value: str | None) -> list[str]:
    """``argv`` with ``option`` set to ``value`` (appended when absent; a flag when value is None)."""
    argv = list(argv)
    if option in argv:
        i = argv.index(option)
        argv[i + 1:i + 2] = [] if value is None else [value]
        return argv if value is not None else argv[:i] + argv[i + 1:]
    return argv + [option] + ([] if value is None else [value])


def refuses(argv: list[str], root, match: str) -> None:
    """``assert_cli_refuses``, and the error is a single line (progress bars aside)."""
    text = assert_cli_refuses(argv, root, match=match)
    errors = [line for line in text.split("\n") if "error" in line]
    assert len(errors) == 1 and text.rstrip().endswith(errors[0].strip()), text


W = "{work}"  # stands for the fixture folder in the tables below
EXTRACT = ["extract", "--tokenizer", f"{W}/vq", "--dataset", "folder", "--root", f"{W}/train", "--image-size", "8",
           "--device", "cpu", "--out", f"{W}/new_store"]
EXTRACT_CASES = [
    ("--batch-size", "0", "batch_size.*at least 1"), ("--batch-size", "-3", "at least 1"),
    ("--batch-size", "nan", "invalid int"), ("--batch-size", "1.5", "invalid int"), ("--workers", "-1", "0 or more"),
    ("--image-size", "0", "image_size.*positive"), ("--image-size", "-8", "positive"),
    ("--image-size", "inf", "invalid"), ("--image-size", "7", "multiple of the tokenizer"),
    ("--crop-ratio", "nan", "finite"), ("--crop-ratio", "inf", "finite"), ("--crop-ratio", "-1", "at least 1.0"),
    ("--crop-ratio", "1e6", "at most 2.0"), ("--image-size", "100000", "at most 4096 pixels"),
    ("--crop-ratio", "wide", "invalid float"), ("--per-class", "0", "at least 1"), ("--per-class", "-2", "at least 1"),
    ("--per-class", "99", "holds 8 images, fewer than per_class=99"), ("--subset-seed", "3", "give per_class"),
    ("--subset-seed", "x", "invalid int"),
    ("--num-classes", "0", "at least 1"), ("--num-classes", "7", "3 class folders"),
    ("--tokenizer", f"{W}/missing", "does not exist"), ("--tokenizer", f"{W}/notes.txt", "is a file, not a Mirai"),
    ("--tokenizer", f"{W}/gpt", "'gpt' model.*tokenizer is a Mirai VQ"), ("--tokenizer", f"{W}/empty", "config.json"),
    ("--tokenizer", f"{W}/codes_train", "config.json"), ("--ema", None, "no EMA weights"),
    ("--root", f"{W}/missing", "does not exist"), ("--root", f"{W}/notes.txt", "not a directory"),
    ("--root", f"{W}/vq", "no class sub-folders"), ("--root", f"{W}/float_range", "odd.tiff has mode F\\b"),
    ("--root", f"{W}/int32_range", "odd.tiff has mode I\\b"), ("--root", f"{W}/lab", "odd.tiff has mode LAB"),
    ("--dataset", "imagenet", "invalid choice"), ("--split", "val", "invalid choice"),
    ("--views", "five_crop", "invalid choice"), ("--device", "toaster", "not a torch device"),
    ("--device", "cuda:99", "CUDA|cuda"), ("--out", f"{W}/notes.txt", "not a code store"),
    ("--out", f"{W}/codes_train", "--overwrite"), ("--out", f"{W}/train", "not a code store"),
    ("--out", f"{W}/notes.txt/store", "is a file"), ("--out", f"{W}/train/store", "inside the dataset folder"),
    ("--out", "/proc/mirai_store", "cannot create anything in /proc"),  # a folder the system will not write into
]


@pytest.mark.parametrize("option, value, match", EXTRACT_CASES, ids=[f"{o}={v}" for o, v, _ in EXTRACT_CASES])
def test_extract_refuses_bad_values(work, option, value, match):
    argv = [a.replace(W, str(work)) for a in replace(EXTRACT, option, value)]
    refuses(argv, work, match)


def test_extract_refuses_a_crop_ratio_that_its_views_would_not_use(work):
    argv = [a.replace(W, str(work)) for a in EXTRACT]
    refuses(argv + ["--views", "flip", "--crop-ratio", "1.2"], work, "--crop-ratio applies to --views ten_crop only")


def test_extract_reports_a_bad_image_from_a_worker_process_in_one_line(work):
    argv = [a.replace(W, str(work)) for a in replace(EXTRACT, "--root", f"{W}/float_range")]
    refuses(argv + ["--workers", "1"], work, "odd.tiff has mode F")


CHECK = ["data", "check", f"{W}/codes_train", "--out", f"{W}/check.png", "--device", "cpu"]
CHECK_CASES = [
    ("--n", "0", "--n must be at least 1"), ("--n", "-1", "at least 1"), ("--n", "nan", "invalid int"),
    ("--nrow", "0", "--nrow must be at least 1"), ("--nrow", "-2", "at least 1"), ("--seed", "1e3", "invalid int"),
    ("--min-agreement", "nan", "finite"), ("--min-agreement", "inf", "finite"), ("--min-agreement", "-0.1", "lie in"),
    ("--min-agreement", "1.5", "lie in"), ("--min-agreement", "most", "invalid float"),
    ("--out", f"{W}/empty", "is a directory"), ("--out", f"{W}/check.txt", "unknown file type"),
    ("--out", f"{W}/codes_train/check.png", "inside the code store"), ("--out", f"{W}/notes.txt/c.png", "is a file"),
    ("--tokenizer", f"{W}/missing", "does not exist"), ("--tokenizer", f"{W}/notes.txt", "is a file"),
    ("--tokenizer", f"{W}/gpt", "'gpt' model"), ("--tokenizer", f"{W}/other_vq", "weights differ"),
    ("--source-root", f"{W}/missing", "source root.*not a directory"), ("--device", "toaster", "not a torch device"),
    ("store", f"{W}/missing", "does not exist"), ("store", f"{W}/notes.txt", "is a file"),
    ("store", f"{W}/train", "no manifest.json"), ("store", f"{W}/vq", "no manifest.json"),
    ("store", f"{W}/ids_store", r"code ids 0\.\.999|ids \d+\.\.999"), ("store", f"{W}/labels_store", r"labels 5\.\.5"),
]


@pytest.mark.parametrize("option, value, match", CHECK_CASES, ids=[f"{o}={v}" for o, v, _ in CHECK_CASES])
def test_data_check_refuses_bad_values(work, option, value, match):
    argv = CHECK[:2] + [value] + CHECK[3:] if option == "store" else replace(CHECK, option, value)
    refuses([a.replace(W, str(work)) for a in argv], work, match)


SCORE = ["evaluate", f"{W}/samples.npz", "--ref", f"{W}/ref.npz", "--device", "cpu", "--out", f"{W}/m.json"]
BAD_NPZ = [(f"{W}/missing.npz", "does not exist"), (f"{W}/empty", "is a directory"),
           (f"{W}/notes.txt", "is not an .npz archive"), (f"{W}/images.npy", "single .npy array"),
           (f"{W}/pickled.npz", "cannot be read.*no object arrays"), (f"{W}/float.npz", "must be uint8"),
           (f"{W}/grey.npz", "must be uint8"), (f"{W}/no_images.npz", r"holds no images \(shape \(0, ")]
SCORE_CASES = [(where, path, match) for where in ("samples", "--ref") for path, match in BAD_NPZ] + [
    ("samples", f"{W}/one.npz", "at least 2"), ("samples", f"{W}/float_labels.npz", "must be integers"),
    ("--ref", f"{W}/pickled_meta.npz", "'meta'.*cannot be read"), ("--ref", f"{W}/mu_only.npz", "without 'sigma'"),
    ("--batch-size", "0", "batch_size.*at least 1"), ("--batch-size", "-1", "at least 1"),
    ("--batch-size", "nan", "invalid int"), ("--batch-size", "2.5", "invalid int"),
    ("--evaluator", "clip", "invalid choice"), ("--device", "toaster", "not a torch device"),
    ("--fashion-evaluator", f"{W}/missing", "does not exist"), ("--fashion-evaluator", f"{W}/notes.txt", "is a file"),
    ("--fashion-evaluator", f"{W}/gpt", "'gpt' model.*train-fashion-classifier"),
    ("--fashion-evaluator", f"{W}/vq", "'vq' model"),
    ("--out", f"{W}/empty", r"is a directory.*empty/out\.json"), ("--out", f"{W}/samples.npz", "also an input"),
    ("--out", f"{W}/notes.txt/m.json", "is a file"),
    ("--out", f"{W}/notes.txt", "already exists and is not a metrics report.*--overwrite"),
    ("--out", f"{W}/gpt/config.json", "already exists and is not a metrics report"),
    ("--out", "/proc/mirai/m.json", "cannot create anything in /proc"),  # before the scoring, not after it
]
INCEPTION_CASES = [(f"{W}/missing.pth", "does not exist"), (f"{W}/notes.pth", "not loaded|not a readable"),
                   (f"{W}/empty", "is a directory"), (f"{W}/samples.npz", "must be one of")]


@pytest.mark.parametrize("option, value, match", SCORE_CASES, ids=[f"{o}={v}" for o, v, _ in SCORE_CASES])
def test_evaluate_refuses_bad_values(work, option, value, match):
    argv = [SCORE[0], value] + SCORE[2:] if option == "samples" else replace(SCORE, option, value)
    refuses([a.replace(W, str(work)) for a in argv], work, match)


@pytest.mark.parametrize("weights, match", INCEPTION_CASES, ids=[w for w, _ in INCEPTION_CASES])
def test_evaluate_refuses_bad_inception_weights_before_building_the_network(work, weights, match):
    argv = SCORE + ["--evaluator", "inception", "--inception-weights", weights]
    refuses([a.replace(W, str(work)) for a in argv], work, match)


MAKE_REF = ["evaluate", "make-ref", "--images", f"{W}/samples.npz", "--evaluator", "fashion", "--device", "cpu",
            "--out", f"{W}/new_ref.npz"]
MAKE_REF_CASES = [("--images", path, match) for path, match in BAD_NPZ] + [
    ("--images", f"{W}/one.npz", "at least 2"), ("--images", f"{W}/size28.npz", "32×32.*28×28.*pad"),
    ("--batch-size", "0", "at least 1"), ("--batch-size", "-5", "at least 1"),
    ("--batch-size", "inf", "invalid int"), ("--evaluator", "clip", "invalid choice"),
    ("--dataset", "fashion-mnist", "not allowed with argument"), ("--split", "val", "invalid choice"),
    ("--device", "toaster", "not a torch device"), ("--fashion-evaluator", f"{W}/gpt", "'gpt' model"),
    ("--out", f"{W}/ref.npz", "already exists.*--overwrite"), ("--out", f"{W}/samples.npz", "also an input|already"),
    ("--out", f"{W}/empty", r"is a directory.*empty/out\.npz"), ("--out", f"{W}/notes.txt/r.npz", "is a file"),
]


@pytest.mark.parametrize("option, value, match", MAKE_REF_CASES, ids=[f"{o}={v}" for o, v, _ in MAKE_REF_CASES])
def test_make_ref_refuses_bad_values(work, option, value, match):
    refuses([a.replace(W, str(work)) for a in replace(MAKE_REF, option, value)], work, match)


def test_make_ref_never_overwrites_its_input_or_reads_a_missing_dataset(work):
    argv = [a.replace(W, str(work)) for a in replace(MAKE_REF, "--out", f"{W}/samples.npz")]
    refuses(argv + ["--overwrite"], work, "also an input")
    argv = ["evaluate", "make-ref", "--dataset", "fashion-mnist", "--data-root", str(work / "missing"),
            "--device", "cpu", "--out", str(work / "new_ref.npz")]
    refuses(argv, work, "lacks the Fashion-MNIST file")


TRAIN = ["evaluate", "train-fashion-classifier", "--out", f"{W}/new_evaluator"]
TRAIN_CASES = [
    ("--epochs", "0", "at least 1"), ("--epochs", "-1", "at least 1"), ("--epochs", "nan", "invalid int"),
    ("--batch-size", "0", "at least 1"), ("--lr", "nan", "finite"), ("--lr", "inf", "finite"), ("--lr", "0", "above 0"),
    ("--lr", "-0.003", "above 0"), ("--lr", "fast", "invalid float"), ("--threads", "0", "at least 1"),
    ("--data-root", f"{W}/missing", "does not exist"), ("--data-root", f"{W}/notes.txt", "not a directory"),
    ("--out", f"{W}/notes.txt", "is a file"), ("--out", f"{W}/train", "holds other files"),
    ("--out", f"{W}/notes.txt/evaluator", "is a file"),
    ("--out", f"{W}/vq", "already holds a checkpoint.*--overwrite"),
]


@pytest.mark.parametrize("option, value, match", TRAIN_CASES, ids=[f"{o}={v}" for o, v, _ in TRAIN_CASES])
def test_train_fashion_classifier_refuses_bad_values_before_training(work, option, value, match):
    refuses([a.replace(W, str(work)) for a in replace(TRAIN, option, value)], work, match)


@pytest.mark.parametrize("suffixes, usual, expected", [(None, "", "out"), (None, ".npz", "out.npz"),
                                                        ([".json"], "", "out.json"), ([".npz", ".png"], ".npz", "out.npz")])
def test_output_directory_error_suggests_a_name_that_passes(tmp_path, suffixes, usual, expected):
    with pytest.raises(ConfigError, match="is a directory") as caught:
        check_output_file(tmp_path, "--out", suffixes=suffixes, usual_suffix=usual)
    suggested = str(caught.value).rsplit("e.g. ", 1)[1]
    assert Path(suggested) == tmp_path / expected
    assert check_output_file(suggested, "--out", suffixes=suffixes, usual_suffix=usual) == Path(suggested)
