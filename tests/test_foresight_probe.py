"""``mirai analyze foresight``: the probes, the gradient comparison and the checkpoint it reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import MIRAI_E, assert_cli_refuses, encoder_overrides, make_cfg

from mirai import checkpoint
from mirai.analysis.foresight_probe import (
    explained_variance,
    foresight_probe,
    gradient_alignment,
    load_foresight_run,
    probe_accuracy,
)
from mirai.cli.main import main
from mirai.data.codes import CodeStore
from mirai.errors import ConfigError
from mirai.models import GPT
from mirai.training.objective import Objective, ntp_loss
from mirai.training.trainer import train


def test_probe_accuracy_finds_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 800)
    fit = np.arange(800) < 400
    coded = np.eye(4)[labels] + 0.1 * rng.normal(size=(800, 4))
    assert probe_accuracy(coded, labels, fit) > 0.95
    assert probe_accuracy(rng.normal(size=(800, 4)), labels, fit) < 0.4  # chance is 0.25


def test_explained_variance_of_a_linear_map_and_of_independent_noise():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(600, 8))
    fit = np.arange(600) < 300
    assert explained_variance(inputs @ rng.normal(size=(8, 5)), inputs, fit) > 0.99
    assert explained_variance(rng.normal(size=(600, 5)), inputs, fit) < 0.05
    # A target that is the inputs' map plus a per-class offset: the classes explain the rest.
    classes = rng.integers(0, 20, 600)
    target = inputs @ rng.normal(size=(8, 5)) + 3 * rng.normal(size=(20, 5))[classes]
    alone, both = explained_variance(target, inputs, fit), explained_variance(target, inputs, fit, classes, 20)
    assert alone < 0.5 and both > 0.99


def test_gradient_alignment_ratio_and_cosine():
    g = [torch.tensor([1.0, 2.0]), None, torch.tensor([[3.0]])]
    ratio, cosine = gradient_alignment(g, [2 * g[0], torch.ones(1), 2 * g[2]])  # the 2nd has no NTP gradient
    assert ratio == pytest.approx(2.0) and cosine == pytest.approx(1.0)
    assert gradient_alignment(g, [-x if x is not None else None for x in g])[1] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="share no parameter"):
        gradient_alignment([None], [torch.ones(1)])


@pytest.fixture(scope="module", params=["ema", "encoder"])
def foresight_run(request, stores, tmp_path_factory):
    overrides = dict(MIRAI_E) if request.param == "ema" else encoder_overrides(stores)
    result = train(make_cfg(stores, tmp_path_factory.mktemp("probe") / "run", steps=8, **overrides))
    return request.param, result.checkpoint


def test_the_report_covers_every_head_and_the_trainers_own_gradient(foresight_run, stores, tmp_path, capsys):
    source, ckpt = foresight_run
    out = tmp_path / "probe.json"
    assert main(["analyze", "foresight", "--gpt", str(ckpt), "--codes", str(stores / "codes_val"),
                 "--out", str(out), "--batch-size", "6"]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "wrote" in printed and "6 images (all the store holds; --num-images asked for 400)" in printed
    assert report["source"] == source and report["step"] == 8 and report["images"] == 6
    names = [h["head"] for h in report["heads"]]
    assert names == (["offset (0, 0)", "offset (0, 1)", "offset (1, 0)"] if source == "ema" else ["offset (0, 0)"])
    for head in report["heads"]:
        for key in ("model_next_token_acc", "probe_next_token_from_student", "probe_next_token_from_target"):
            assert 0.0 <= head[key] <= 1.0
        assert head["r2_target_from_student"] <= 1.0
    # One batch of all 6 images: the same ratio as the trainer's own objective gives at that step.
    _, model, loss, progress = load_foresight_run(ckpt)
    assert report["heads"][0]["lambda"] == pytest.approx(loss.schedules[0](progress))
    store = CodeStore.open(stores / "codes_val")
    index = np.arange(6)
    batch = {"tokens": torch.from_numpy(store.codes[index, 0].astype(np.int64).reshape(6, -1)),
             "labels": torch.as_tensor(store.labels[index], dtype=torch.int64),
             "image_index": torch.as_tensor(index), "view_index": torch.zeros(6, dtype=torch.int64),
             "images": store.source_images(index, np.zeros_like(index))}
    params = list(model.parameters())
    total = Objective(model, loss)(batch, progress)[0]
    g_total = torch.autograd.grad(total, params, allow_unused=True)
    logits = model(batch["tokens"][:, :-1], batch["labels"])
    g_ntp = torch.autograd.grad(ntp_loss(logits, batch["tokens"]), params, allow_unused=True)
    reached = [(a, t - a) for a, t in zip(g_ntp, g_total) if (t - a).abs().sum() > 0]
    ratio = (torch.cat([f.flatten() for _, f in reached]).norm()
             / torch.cat([a.flatten() for a, _ in reached]).norm())
    assert report["gradient"]["batches"] == 1
    assert report["gradient"]["norm_ratio_mean"] == pytest.approx(float(ratio), rel=1e-4)


def test_runs_without_a_foresight_loss_or_a_training_state_are_refused(stores, tmp_path):
    base = train(make_cfg(stores, tmp_path / "base", steps=2)).checkpoint
    codes = str(stores / "codes_val")
    assert_cli_refuses(["analyze", "foresight", "--gpt", str(base), "--codes", codes, "--out",
                        str(tmp_path / "o.json")], tmp_path, match="needs a Mirai-I or Mirai-E run")
    weights_only = checkpoint.save(tmp_path / "weights", checkpoint.load(base, GPT))
    assert_cli_refuses(["analyze", "foresight", "--gpt", str(weights_only), "--codes", codes, "--out",
                        str(tmp_path / "o.json")], tmp_path, match="has no train_config.yaml")
    with pytest.raises(ConfigError, match="unknown file type"):
        foresight_probe(base, codes, tmp_path / "probe.png")


def test_a_checkpoint_inside_the_warmup_reports_no_foresight_gradient(stores, tmp_path, capsys):
    # MIRAI_E's warm-up is 2 steps: at step 1 the run has trained with next-token prediction only.
    train(make_cfg(stores, tmp_path / "run", steps=3, save_every=1, keep_last=3, **MIRAI_E))
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    out = tmp_path / "probe.json"
    assert main(["analyze", "foresight", "--gpt", str(ckpt), "--codes", str(stores / "codes_val"),
                 "--out", str(out), "--batch-size", "6"]) == 0
    report = json.loads(out.read_text())
    assert report["in_warmup"] and report["gradient"] is None
    assert [h["lambda"] for h in report["heads"]] == [0.0, 0.0, 0.0]
    assert "inside the NTP-only warm-up" in capsys.readouterr().out


def test_bad_probe_settings_are_refused_before_any_model_work(foresight_run, stores, tmp_path, monkeypatch):
    _, ckpt = foresight_run
    args = ["analyze", "foresight", "--gpt", str(ckpt), "--codes", str(stores / "codes_val"),
            "--out", str(tmp_path / "o.json")]
    monkeypatch.setattr("mirai.analysis.foresight_probe.load_foresight_run", None)  # reached: a TypeError
    for extra, match in ((["--seed", "-1"], r"seed must be an integer between 0 and 4294967295, got -1"),
                         (["--seed", str(2**32)], r"seed must be an integer between 0 and 4294967295, got 4294967296"),
                         (["--num-images", "0"], "num_images must be at least 2, got 0"),
                         (["--num-images", "1"], "num_images must be at least 2, got 1")):
        assert_cli_refuses(args + extra, tmp_path, match=match)


def test_a_training_store_out_of_reach_is_named_with_where_its_path_comes_from(foresight_run, stores, tmp_path):
    _, ckpt = foresight_run
    moved = shutil.copytree(ckpt, tmp_path / "ckpt")
    config = moved / "train_config.yaml"
    config.write_text(config.read_text().replace(str(stores / "codes_train"), "runs/codes/elsewhere"))
    assert_cli_refuses(["analyze", "foresight", "--gpt", str(moved), "--codes", str(stores / "codes_val"),
                        "--out", str(tmp_path / "o.json")], tmp_path,
                       match=r"runs/codes/elsewhere.*data.codes in .*train_config.yaml.*run it from the folder")


def test_a_bad_key_in_the_saved_training_config_names_the_file(foresight_run, stores, tmp_path):
    """The training config a checkpoint saved is read back with the config checks; the error names that file."""
    _, ckpt = foresight_run
    moved = shutil.copytree(ckpt, tmp_path / "ckpt")
    config = moved / "train_config.yaml"
    config.write_text(config.read_text().replace("\nmodel:\n", "\nmodel:\n  n_layr: 4\n", 1))
    assert_cli_refuses(["analyze", "foresight", "--gpt", str(moved), "--codes", str(stores / "codes_val"),
                        "--out", str(tmp_path / "o.json")], tmp_path,
                       match=rf"{config}: config.model: unknown key\(s\) \['n_layr'\].*another version of Mirai")


def test_analyses_refuse_codes_from_another_tokenizer_than_the_gpts(stores, tmp_path):
    """Same sizes, other tokenizer weights: the token ids would mean other patches to the GPT (probe, t-SNE, class
    map alike), so each names the tokenizer to extract with instead of reporting numbers."""
    from mirai.data.codes import extract
    from mirai.data.folders import ImageFolder
    from mirai.data.views import ViewSpec
    from mirai.models import build_vq

    ckpt = str(train(make_cfg(stores, tmp_path / "base", steps=1)).checkpoint)
    torch.manual_seed(1)
    vq = build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4).eval()
    other = str(tmp_path / "other_codes")
    extract(vq, ImageFolder.scan(stores / "val"), ViewSpec("ten_crop", 8), other,
            tokenizer_path=checkpoint.save(tmp_path / "other_vq", vq), progress=False)
    match = f"extracted with another tokenizer .* than the codes .* --tokenizer {stores / 'vq'}"
    for argv in (["foresight", "--gpt", ckpt, "--codes", other, "--out", str(tmp_path / "o.json")],
                 ["tsne", "--gpt", ckpt, "--codes", other, "--out", str(tmp_path / "t.png")],
                 ["classmap", "--gpt", ckpt, "--codes", other, "--layer", "1", "--out", str(tmp_path / "c.png")]):
        assert_cli_refuses(["analyze", *argv], tmp_path, match=match)
    assert main(["analyze", "tsne", "--gpt", ckpt, "--codes", str(stores / "codes_val"), "--perplexity", "3",
                 "--out", str(tmp_path / "t.png")]) == 0  # the GPT's own tokenizer's codes
