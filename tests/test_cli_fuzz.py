"""Bad values for every option of `mirai train`, `convert llamagen`, `flops`, `bench convergence`,
`analyze curves|tsne|classmap|foresight`, `tokenizer train|eval`, `encoder train-fashion|probe|info` and `demo`:
zero, negative, NaN, infinity, the wrong type, a missing file, a file of the wrong kind (a folder
for a file and back, text for a checkpoint or YAML, a VQ for a GPT, a pickle holding code).

Each must end in one error line and a non-zero exit status, without a traceback, and write nothing
outside its own output (``helpers.assert_cli_refuses``). Every refusal happens before any training,
Fashion-MNIST loading or download, so each case takes a fraction of a second. The unchanged
commands succeed (``test_the_unchanged_commands_succeed``), so each refusal is the bad value's doing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import assert_cli_refuses, make_cfg
from mirai import checkpoint
from mirai.cli.main import main
from mirai.config import to_dict
from mirai.data.codes import extract
from mirai.data.folders import ImageFolder
from mirai.data.views import ViewSpec
from mirai.foresight.encoders import ASSETS
from mirai.models import VQModel, build_gpt

W, OUT = "<W>", "<OUT>"  # placeholders: the fixture's folder, and the case's own output folder

TRAIN = ["train", "--config", f"{W}/train.yaml", f"run_dir={OUT}"]
CONVERT = ["convert", "llamagen", f"{W}/gpt.pt", OUT]
FLOPS = ["flops", "--model", "GPT-Nano"]
BENCH = ["bench", "convergence", "--config", f"{W}/bench.yaml", f"out_dir={OUT}"]
CURVES = ["analyze", "curves", f"{W}/run", "--out", f"{OUT}/curves.png"]
TSNE = ["analyze", "tsne", "--gpt", f"{W}/gpt", "--codes", f"{W}/codes_val", "--out", f"{OUT}/t.png"]
CLASSMAP = ["analyze", "classmap", f"{W}/gpt", "--codes", f"{W}/codes_train", "--layer", "1", "--k", "3",
            "--out", f"{OUT}/c.png"]
PROBE = ["analyze", "foresight", "--gpt", f"{W}/gpt", "--codes", f"{W}/codes_val", "--out", f"{OUT}/p.json"]
TOK_TRAIN = ["tokenizer", "train", "--no-progress", "--config", f"{W}/vq.yaml", f"out_dir={OUT}"]
TOK_EVAL = ["tokenizer", "eval", "--tokenizer", f"{W}/vq"]
ENC_TRAIN = ["encoder", "train-fashion", "--out", f"{OUT}/enc", "--no-probe"]
ENC_PROBE = ["encoder", "probe", "fashion8"]
ENC_INFO = ["encoder", "info", "fashion8", "--grid", "4"]
DEMO = ["demo", "--out", OUT, "--device", "cpu"]


def with_option(base: list[str], option: str, value: str) -> list[str]:
    """``base`` with ``option`` set to ``value`` (replaced where ``base`` has it, else appended)."""
    if option in base:
        i = base.index(option)
        return [*base[:i + 1], value, *base[i + 2:]]
    return [*base, option, value]


def table(base: list[str], rows: dict[str, list[tuple[str, str]]]) -> list[tuple[list[str], str]]:
    """``(argv, match)`` for each ``option -> [(bad value, regex of the error line)]``; an option
    ``=`` means the value is a ``key=value`` override appended to ``base``."""
    cases = []
    for option, values in rows.items():
        for value, match in values:
            cases.append(([*base, value] if option == "=" else with_option(base, option, value), match))
    return cases


MISSING = f"{W}/missing"
CASES: dict[str, list[tuple[list[str], str]]] = {
    "train": [
        (with_option(TRAIN, "--config", MISSING), "does not exist"),
        (with_option(TRAIN, "--config", f"{W}/empty"), "is a directory"),
        (with_option(TRAIN, "--config", f"{W}/notes.txt"), "must hold a mapping"),
        (with_option(TRAIN, "--config", f"{W}/gpt.pt"), "not .*YAML|not a text file"),
        (with_option(TRAIN, "--config", f"{W}/bench.yaml"), "is a bench config .*: run it with mirai bench convergence"),
        (TRAIN + ["optim.lr={bad"], "cannot parse value"),
        *table(TRAIN, {"=": [("log_every=0", "log_every"), ("optim.lr=nan", "optim.lr.*finite"),
                             ("optim.lr=-1", "optim.lr"), ("steps=-1", "steps"), ("steps=abc", "steps"),
                             ("foresight.source=bogus", "bogus"), ("bogus=1", "unknown key"),
                             ("val_images=9", "did you mean data.val_images"), ("optim.lrr=1", "did you mean optim.lr"),
                             (f"data.val_codes={MISSING}", "data.val_codes: code store .*data.val_codes=null"),
                             ("optim.batch_size=0", "batch_size"), ("ema.decay=inf", "ema.decay"),
                             ("model.name=GPT-Bogus", "GPT-Bogus"), ("device=tpu", "device"),
                             (f"data.codes={MISSING}", "missing"), (f"data.codes={W}/notes.txt", "notes.txt"),
                             (f"data.codes={W}/vq", "vq"),
                             ("data.val_codes=''", r"data.val_codes is empty \(''\); give a value"),
                             ("foresight.encoder=' '", "foresight.encoder is empty"),
                             ("data.codes=''", "data.codes is empty: give the code store from `mirai extract`"),
                             ("data.codes=' '", "data.codes is empty: give the code store from `mirai extract`")]}),
        (with_option(TRAIN, "--config", ""), "--config is empty; give a value"),
        (TRAIN + ["--resume", f"{W}/empty"], "empty"),
        (TRAIN + ["--resume", f"{W}/notes.txt"], "notes.txt"),
        (TRAIN + ["--resume", f"{W}/vq"], "vq"),
        (TRAIN + ["--resume", MISSING], "missing"),
        (TRAIN + ["--resume"], "no checkpoint to resume from"),
        (TRAIN + ["--resume", "steps=9"], "no checkpoint to resume from"),  # the override is taken as one
        (["train", f"run_dir={OUT}", "steps=5"], "data.codes is empty"),  # no --config: defaults need a store
        (["train", "--resume", "steps=9"], "--resume without --config .* no run_dir=DIR was given"),
        (["train", "--resume", f"run_dir={OUT}"], "config.yaml does not exist"),
    ],
    "convert": [
        (["convert", "llamagen", MISSING, OUT], "does not exist"),
        (["convert", "llamagen", f"{W}/notes.txt", OUT], "notes.txt (was not loaded|is not a readable)"),
        (["convert", "llamagen", f"{W}/train.yaml", OUT], "train.yaml is a YAML or JSON config, not a weights file"),
        (["convert", "llamagen", f"{W}/code.pt", OUT], "pickled Python objects"),
        (["convert", "llamagen", f"{W}/empty", OUT], "directory"),
        (["convert", "llamagen", f"{W}/vq", OUT], "directory"),
        (["convert", "llamagen", f"{W}/gpt.pt", f"{W}/notes.txt"], "notes.txt"),
        (["convert", "llamagen", f"{W}/gpt.pt", f"{W}/vq"], "already"),
        (["convert", "llamagen", f"{W}/gpt.pt", f"{W}/gpt.pt"], "gpt.pt"),
        (CONVERT, "does not store its token grid.*--grid-size"),  # not a released file: never a silent 16x16
        (["convert", "llamagen", "llamagen:c2i_Q_256", OUT], "unknown released input .*llamagen:c2i_B_256"),
        # The output and the settings are checked before a released file would be fetched (offline here).
        (["convert", "llamagen", "llamagen:c2i_B_256", f"{W}/vq"], "already"),
        (["convert", "llamagen", "llamagen:c2i_B_256", OUT, "--regions-per-side", "0"], "--regions-per-side"),
        *table(CONVERT, {"--grid-size": [("0", "--grid-size must be at least 1"), ("-1", "--grid-size"),
                                         ("abc", "invalid int")],
                         "--image-size": [("0", "--image-size"), ("17", "multiple of 16"), ("-16", "--image-size"),
                                          ("nan", "invalid int")],
                         "--model": [("GPT-Bogus", "GPT-Bogus"), ("VQ-Tiny", "VQ-Tiny")],
                         "--kind": [("bogus", "invalid choice"), ("vq", "quantize")]}),
    ],
    "flops": [
        (with_option(FLOPS, "--config", MISSING), "does not exist"),
        (with_option(FLOPS, "--config", f"{W}/empty"), "is a directory"),
        (with_option(FLOPS, "--config", f"{W}/notes.txt"), "must hold a mapping"),
        *table(FLOPS, {"--grid": [("0", "grid"), ("-3", "grid"), ("abc", "invalid int")],
                       "--vocab": [("0", "vocab"), ("-1", "vocab")],
                       "--classes": [("0", "classes"), ("-2", "classes")],
                       "--k": [("0", "k must be between 1 and 64 heads"), ("-1", "k")],
                       "--layer": [("0", "layer"), ("3", "outside the model's blocks 1..2")],
                       "--encoder-res": [("0", "--encoder-res"), ("-224", "--encoder-res"), ("7", "--encoder-res")],
                       "--model": [("GPT-Bogus", "unknown GPT config"), ("VQ-Tiny", "unknown GPT config")],
                       "--source": [("bogus", "invalid choice")],
                       "--head": [("bogus", "invalid choice")]}),
        (FLOPS + ["--source", "encoder", "--layer", "9"], "outside the model's blocks"),
    ],
    "bench": [
        (with_option(BENCH, "--config", MISSING), "does not exist"),
        (with_option(BENCH, "--config", f"{W}/empty"), "is a directory"),
        (with_option(BENCH, "--config", f"{W}/notes.txt"), "must hold a mapping"),
        (with_option(BENCH, "--config", f"{W}/train.yaml"), "unknown key"),
        *table(BENCH, {"=": [("seeds=[]", "seeds"), ("seeds=[0,0]", "seeds"), ("steps=0", "steps"),
                             ("steps=-4", "steps"), ("num_samples=0", "num_samples"),
                             ("num_samples=1", "num_samples must be at least 2"), ("num_samples=nan", "num_samples"),
                             ("sample_batch_size=0", "sample_batch_size must be at least 1"),
                             ("eval_batch_size=-1", "eval_batch_size"),
                             ("eval_at=[99]", "eval_at"), ("variants={}", "variants"), ("device=tpu", "device"),
                             ("average_last=0", "average_last"), ("tsne_layer=0", "tsne_layer"),
                             ("bogus=1", "unknown key"), ("run_layout='{variant}/{bogus}'", "run_layout"),
                             ("run_layout='../{variant}'", "inside runs_dir"),
                             ("train_overrides=[optim.lr=nan]", "optim.lr"),
                             ("train_overrides=[steps=5]", "bench controls"),
                             (f"train_config={MISSING}", "does not exist"),
                             (f"reference_codes={MISSING}", "missing"),
                             (f"reference_codes={W}/codes_val", "scores 32×32 images"),
                             (f"train_overrides=[data.codes={W}/codes_train]", "different tokenizers"),
                             (f"evaluator={W}/vq", "'vq' model"), (f"evaluator={MISSING}", "missing"),
                             ("reference_codes=' '", "reference_codes is empty: give the held-out code store"),
                             (f"runs_dir={W}/notes.txt", "runs_dir .*notes.txt is a file, not a bench output directory")]}),
        (BENCH + ["--variant", "bogus"], "variant bogus is not in the bench config"),
        (BENCH + ["--seed", "7"], "seed 7 is not in the bench config"),
        (BENCH + ["--seed", "abc"], "invalid int"),
        (BENCH + ["--dry-run", "--variant", "bogus"], "variant bogus"),
    ],
    "analyze": [
        (["analyze", "curves", MISSING, "--out", f"{OUT}/c.png"], "run directory .*missing does not exist"),
        (["analyze", "curves", f"{W}/notes.txt", "--out", f"{OUT}/c.png"], "notes.txt is a file"),
        (["analyze", "curves", f"{W}/empty", "--out", f"{OUT}/c.png"], "no metrics.jsonl"),
        (["analyze", "curves", "", "--out", f"{OUT}/c.png"], "RUN_DIR is empty"),  # not the current folder
        (["analyze", "curves", f"{W}/run", f"{W}/./run", "--out", f"{OUT}/c.png"], "run .* is given more than once"),
        *table(CURVES, {"--smooth": [("1.5", r"smooth must lie in \[0, 1\)"), ("nan", "smooth"), ("-0.1", "smooth"),
                                     ("inf", "smooth"), ("abc", "invalid float")],
                        "--key": [("bogus", "no run logged 'bogus'")],
                        "--out": [(f"{OUT}/c.xyz", "file type"), (f"{W}/empty", "is a directory"),
                                  (f"{W}/notes.txt/c.png", "is a file"),
                                  (f"{OUT}/{'a' * 300}.png", r"cannot create \S+ \(File name too long\)"),
                                  ("/proc/mirai/c.png", "cannot create anything in /proc")]}),
        *table(TSNE, {"--gpt": [(MISSING, "missing"), (f"{W}/vq", "'vq' model"), (f"{W}/notes.txt", "notes"),
                                       (f"{W}/empty", "config.json")],
                      "--codes": [(MISSING, "missing"), (f"{W}/vq", "vq"), (f"{W}/notes.txt", "notes.txt")],
                      "--layer": [("0", "layer"), ("3", "outside the model's blocks 1..2"), ("x", "invalid int")],
                      "--perplexity": [("0", "perplexity"), ("nan", "perplexity"), ("-1", "perplexity"),
                                       ("inf", "perplexity")],
                      "--image-index": [("-1", "image indices"), ("999", "image indices")],
                      "--seed": [("-1", "seed"), ("4294967296", "seed must be an integer between 0 and 4294967295")],
                      "--out": [(f"{OUT}/t.xyz", "file type"), (f"{W}/empty", "is a directory")]}),
        (TSNE + ["--labels", "a", "b"], "label per checkpoint"),
        *table(CLASSMAP, {"--num-images": [("0", "num_images"), ("-1", "num_images"), ("2", "k=3")],
                          "--k": [("0", "k must be"), ("-1", "k must be"), ("99", "k=99")],
                          "--perplexity": [("0", "perplexity"), ("nan", "perplexity")],
                          "--layer": [("0", "layer"), ("3", "outside the model's blocks 1..2")],
                          "--codes": [(MISSING, "missing"), (f"{W}/notes.txt", "notes.txt")],
                          "--encoder": [("bogus_encoder", "bogus_encoder"), (f"{W}/notes.txt", "notes.txt")],
                          "--seed": [("-1", "seed")],
                          "--out": [(f"{OUT}/c.xyz", "file type"), (f"{W}/empty", "is a directory")]}),
        (["analyze", "classmap", f"{W}/vq", *CLASSMAP[3:]], "'vq' model"),
        (["analyze", "classmap", MISSING, *CLASSMAP[3:]], "missing"),
        (["analyze", "classmap", "--gpt", MISSING, *CLASSMAP[3:]], "missing"),  # the canonical flag
        (["analyze", "classmap", *CLASSMAP[3:]], "give the GPT checkpoint once: --gpt"),
        (["analyze", "tsne", *TSNE[4:]], "no GPT checkpoint given: pass --gpt"),
        *table(PROBE, {"--gpt": [(MISSING, "has no train_config.yaml"), (f"{W}/gpt", "has no train_config.yaml"),
                                 (f"{W}/notes.txt", "has no train_config.yaml")],
                       "--codes": [(MISSING, "missing"), (f"{W}/notes.txt", "notes.txt"), (f"{W}/vq", "vq")],
                       "--num-images": [("0", "num_images"), ("-1", "num_images"), ("1", "at least 2"),
                                        ("x", "invalid int")],
                       "--batch-size": [("0", "batch_size"), ("nan", "invalid int")],
                       "--max-rows": [("0", "max_rows"), ("-5", "max_rows")],
                       "--device": [("tpu", "device")],
                       "--out": [(f"{OUT}/p.xyz", "file type"), (f"{W}/empty", "is a directory"),
                                 (f"{W}/codes_val", "is a directory")]}),
    ],
    "tokenizer": [
        (with_option(TOK_TRAIN, "--config", MISSING), "does not exist"),
        (with_option(TOK_TRAIN, "--config", f"{W}/empty"), "is a directory"),
        (with_option(TOK_TRAIN, "--config", f"{W}/notes.txt"), "must hold a mapping"),
        *table(TOK_TRAIN, {"=": [("steps=0", "steps must be positive"), ("batch_size=-1", "batch_size"),
                                 ("optim.lr=nan", "optim.lr.*finite"), ("optim.lr=0", "optim.lr"),
                                 ("data.val_size=0", "val_size"), ("data.train_limit=0", "train_limit"),
                                 ("threads=-1", "threads"), ("model.name=VQ-Bogus", "VQ-Bogus"),
                                 ("model.codebook_size=0", "codebook_size"), ("device=tpu", "device"),
                                 ("loss.recon=l3", "l3"), ("restart_stop=1.5", "restart_stop"),
                                 ("restart_every=-1", "restart_every"), ("seed=-1", "seed"),
                                 ("optim.grad_clip=-1", "grad_clip"), ("optim.warmup_steps=-1", "warmup_steps"),
                                 ("loss.adversarial_weight=-1", "adversarial_weight"),
                                 ("model.arch={bogus: 1}", "bogus"), ("bogus=1", "unknown key"),
                                 (f"data.root={MISSING}", "missing"),
                                 (f"out_dir={W}/notes.txt", "notes.txt"), ("data.root=''", "data.root is empty")]}),
        (TOK_TRAIN[:-1] + [f"out_dir={W}/notes.txt/x"], "out_dir .*notes.txt is a file"),
        *table(TOK_EVAL, {"--tokenizer": [(MISSING, "does not exist"), (f"{W}/gpt", "'gpt' model"),
                                           (f"{W}/notes.txt", "notes.txt"), (f"{W}/empty", "config.json")],
                          "--limit": [("0", "--limit"), ("-1", "--limit"), ("abc", "invalid int")],
                          "--batch-size": [("0", "batch.size"), ("-8", "batch.size")],
                          "--threads": [("-1", "threads")],
                          "--root": [(MISSING, "missing")],
                          "--json": [(f"{W}/empty", "is a directory"), (f"{W}/notes.txt/r.json", "is a file")],
                          "--split": [("val", "invalid choice")]}),
    ],
    "encoder": [
        *table(ENC_TRAIN, {"--epochs": [("0", "epochs"), ("-1", "epochs"), ("nan", "epochs"), ("inf", "epochs")],
                           "--batch-size": [("0", "batch_size"), ("1", "batch_size"), ("x", "invalid int")],
                           "--lr": [("0", "lr"), ("nan", "lr"), ("-1", "lr"), ("inf", "lr")],
                           "--crop-min": [("0", "crop_min"), ("1.5", "crop_min"), ("nan", "crop_min")],
                           "--threads": [("0", "threads"), ("-1", "threads")],
                           "--grid": [("4", "invalid choice")],
                           "--seed": [("-1", "seed")],
                           "--root": [(MISSING, "missing")],
                           "--out": [(f"{W}/notes.txt", "notes.txt"), (f"{W}/vq", "already holds")]}),
        *table(ENC_PROBE, {"--n-train": [("0", "n_train"), ("-1", "n_train")],
                           "--n-test": [("0", "n_test")],
                           "--threads": [("0", "threads")],
                           "--grid": [("0", "grid")],
                           "--root": [(MISSING, "missing")]}),
        (["encoder", "probe", "{bad json"], "not valid JSON"),
        (["encoder", "probe", f"{W}/notes.txt"], "weights file"),
        *[(["encoder", "info", spec, "--grid", "4"], match) for spec, match in [
            ("{bad json", "not valid JSON"), ('{"name": "fashion8", "bogus": 1}', "unknown key"),
            ('{"weights": "x"}', "'name'"), ("[1, 2]", r"\[1, 2\]"), ("bogus_encoder", "bogus_encoder"),
            (f"{W}/notes.txt", "weights file"), (f"{W}/gpt", "gpt"), (f"{W}/empty", "config.json"),
            (MISSING, "missing")]],
        *table(ENC_INFO, {"--grid": [("0", "grid_size must be positive"), ("-1", "grid_size"),
                                     ("abc", "invalid int")]}),
    ],
    "demo": [
        *table(DEMO, {"--steps": [("0", "--steps"), ("-1", "--steps"), ("abc", "invalid int")],
                      "--num-samples": [("0", "--num-samples"), ("1", "--num-samples")],
                      "--per-class": [("-5", "--per-class")],
                      "--variants": [("bogus", "bogus"), (",", "variant"), ("baseline,baseline", "baseline")],
                      "--device": [("tpu", "device")],
                      "--seed": [("-1", "seed")],
                      "--out": [(f"{W}/notes.txt", "notes.txt"), ("", "--out is empty")]}),
        *table(DEMO, {"=": [("optim.lr=nan", "optim.lr"), ("bogus=1", "unknown key"),
                            ("steps=5", "use --steps"), ("model.name=GPT-Bogus", "GPT-Bogus"),
                            ("optim.batch_size=0", "batch_size")]}),
    ],
    "evaluate": [
        (["evaluate", "", "--ref", f"{W}/notes.txt"], "samples is empty"),
        (["evaluate", "make-ref", "--dataset", "fashion-mnist", "--out", ""], "--out is empty"),
    ],
}


def case_id(argv: list[str]) -> str:
    """A readable id: the command line with the fixture folder left out and the output called OUT."""
    text = " ".join(a.replace(f"{W}/", "").replace(OUT, "OUT") for a in argv)
    return text.replace("/", "_")


ALL = [(name, argv, match) for name, rows in CASES.items() for argv, match in rows]


def _param(n: int, argv: list[str], match: str):
    return pytest.param(n, argv, match, id=case_id(argv))


PARAMS = [_param(n, argv, match) for n, (_, argv, match) in enumerate(ALL)]


class TookTooLong(Exception):
    """A case still ran after ``LIMIT_S``: it did real work (training, loading a dataset) instead of refusing."""


LIMIT_S = 20  # generous for a busy machine; a refusal takes well under a second


@contextmanager
def time_limit(seconds: int):
    def stop(signum, frame):
        raise TookTooLong(f"still running after {seconds} s: the refusal must come before any work")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fill(argv: list[str], root: Path, out: Path) -> list[str]:
    return [a.replace(W, str(root)).replace(OUT, str(out)) for a in argv]


@pytest.fixture(scope="module")
def root(stores, tmp_path_factory) -> Path:
    """Good inputs (tiny stores, a matching GPT, a VQ, configs, a run) beside files of every wrong kind."""
    root = tmp_path_factory.mktemp("cli_fuzz")
    for name in ("vq", "codes_train", "codes_val"):
        shutil.copytree(stores / name, root / name)
    torch.manual_seed(0)
    gpt = build_gpt("GPT-Nano", vocab_size=64, grid_size=4, num_classes=3)
    checkpoint.save(root / "gpt", gpt, ema=gpt)
    torch.save({"model": gpt.state_dict()}, root / "gpt.pt")  # a LlamaGen file
    torch.save({"model": gpt.state_dict(), "args": argparse.Namespace(x=1)}, root / "code.pt")  # pickled code
    (root / "notes.txt").write_text("not a checkpoint, not a config\n")
    (root / "empty").mkdir()
    train = to_dict(make_cfg(root, root / "run_unused"))
    (root / "train.yaml").write_text(yaml.safe_dump(train))
    # The bench scores 32 px views: stores of the committed 8x8 tokenizer, 2 images per class.
    vq8 = ASSETS / "vq8"
    for split in ("train", "test"):
        for c in range(3):
            folder = root / f"images32_{split}" / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((32, 32, 3), 40 + 80 * c + i, np.uint8)).save(folder / f"{i}.png")
        extract(checkpoint.load(vq8, VQModel), ImageFolder.scan(root / f"images32_{split}"), ViewSpec("flip", 32),
                root / f"codes32_{split}", tokenizer_path=vq8, progress=False)
    train32 = dict(train, data={"codes": str(root / "codes32_train"), "val_images": 0})
    (root / "train32.yaml").write_text(yaml.safe_dump(train32))
    bench = {"train_config": str(root / "train32.yaml"), "variants": {"baseline": []}, "seeds": [0], "steps": 4,
             "num_samples": 12, "sample_batch_size": 6, "reference_codes": str(root / "codes32_test"),
             "device": "cpu", "eval_batch_size": 64}
    (root / "bench.yaml").write_text(yaml.safe_dump(bench))
    (root / "vq.yaml").write_text("model: {name: VQ-Tiny, codebook_size: 8}\ndata: {val_size: 8}\n")
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss/ntp": 4.0 - s / 10, "time": s}) + "\n" for s in range(1, 6)))
    return root


def test_the_unchanged_commands_succeed(root, tmp_path):
    """The bases of the table work (those that finish in a moment), so a refusal is the bad value's."""
    out = tmp_path / "ok"
    assert main(fill(TRAIN, root, out / "train") + ["--print-config"]) == 0
    assert main(fill(CONVERT, root, out / "convert") + ["--grid-size", "4"]) == 0  # a LlamaGen .pt has no grid
    assert json.loads((out / "convert" / "config.json").read_text())["kind"] == "gpt"
    assert main(fill(FLOPS, root, out) + ["--k", "2", "--layer", "2", "--encoder-res", "56"]) == 0
    assert main(fill(BENCH, root, out / "bench") + ["--dry-run"]) == 0
    assert main(fill(CURVES, root, out / "curves")) == 0
    assert (out / "curves" / "curves.png").is_file()
    assert main(fill(TSNE, root, out / "tsne")) == 0
    assert main(fill(CLASSMAP, root, out / "classmap")) == 0
    assert main(fill(ENC_INFO, root, out)) == 0
    assert not (out / "train").exists() and not (out / "bench").exists()


@pytest.mark.parametrize("n, argv, match", PARAMS)
def test_bad_values_are_refused_in_one_line(root, n, argv, match):
    """A case whose output is one of the fixture's files (``--out notes.txt``) may write nothing at all."""
    out = root / "out" / f"case_{n}"
    output = out if any(OUT in a for a in argv) else None
    with time_limit(LIMIT_S):
        assert_cli_refuses(fill(argv, root, out), root, match=match, output=output)


def test_every_subcommand_is_fuzzed():
    """Each listed command has a table, and each (sub)action of it has cases."""
    words = {" ".join(argv[:2]) for _, argv, _ in ALL}
    for action in ("train --config", "convert llamagen", "flops --model", "bench convergence", "analyze curves",
                   "analyze tsne", "analyze classmap", "analyze foresight", "tokenizer train", "tokenizer eval", "encoder train-fashion",
                   "encoder probe", "encoder info", "demo --out"):
        assert action in words, action


def _value_actions(parser: argparse.ArgumentParser):
    """Every (sub)command parser under ``parser`` (``evaluate``'s own forms too), with each argument of
    it that takes a value."""
    from mirai.cli.evaluate import make_ref_parser, score_parser, train_parser

    stack, found = [parser, make_ref_parser(), score_parser(), train_parser()], []
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(set(action.choices.values()))
            elif action.nargs != 0 and action.dest != "overrides" and action.nargs != argparse.REMAINDER:
                found.append((p, action))
    return found


def test_no_argument_of_any_command_takes_an_empty_string(capsys):
    """'' or blanks for any argument that takes a value, in every command, exit as argparse's own usage
    errors do, naming the argument: as a path '' would silently mean the current folder."""
    from mirai.cli.flags import refuse_blank
    from mirai.cli.main import build_parser

    checked = 0
    for parser, action in _value_actions(build_parser()):
        args = argparse.Namespace(**{a.dest: a.default for a in parser._actions})
        setattr(args, action.dest, ["ok", " "] if action.nargs in ("*", "+") or action.default == [] else "")
        with pytest.raises(SystemExit) as stop:
            refuse_blank(parser, args)
        first = next(a for a in parser._actions if a.dest == action.dest)  # a hidden alias names the canonical flag
        name = first.option_strings[-1] if first.option_strings else first.metavar or first.dest
        assert stop.value.code == 2 and f"{parser.prog}: error: {name} is empty" in capsys.readouterr().err
        checked += 1
    assert checked > 100  # every command's arguments, not a few


def test_python_dash_m_mirai_is_the_mirai_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mirai", "train", "--resume", "steps=9"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "no run_dir=DIR was given" in done.stderr.strip().splitlines()[-1]
