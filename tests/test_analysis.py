"""Analysis tools: training curves, t-SNE maps of GPT/encoder features and their k-NN figure of merit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirai import checkpoint
from mirai.analysis.curves import load_curves, run_labels, smooth_ema
from mirai.analysis.tsne import balanced_subset, gpt_features, knn_accuracy
from mirai.cli.main import main
from mirai.data.codes import CodeStore, extract
from mirai.data.folders import ImageFolder
from mirai.data.views import ViewSpec
from mirai.errors import ConfigError, DataError
from mirai.foresight.encoders import ASSETS
from mirai.models import build_gpt


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_run(run_dir: Path, records: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_knn_accuracy_separates_clusters_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(0, 10, (4, 16))
    clustered = centres[labels] + rng.normal(0, 1, (200, 16))
    assert knn_accuracy(clustered, labels, k=10) == 1.0
    noise = rng.normal(0, 1, (200, 16))
    assert knn_accuracy(noise, labels, k=10) < 0.45  # chance is 0.25
    # Each point is left out of its own vote: the lone class-1 point among class 0 is misclassified.
    lone = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [1.0]])
    assert knn_accuracy(lone, np.array([0, 0, 0, 1, 1, 1, 1]), k=1) == pytest.approx(6 / 7)
    with pytest.raises(DataError, match="more than 10 points"):
        knn_accuracy(clustered[:10], labels[:10])


def test_balanced_subset():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    picked = balanced_subset(labels, 15, seed=1)
    assert np.array_equal(np.bincount(labels[picked]), [5, 5, 5]) and np.all(np.diff(picked) > 0)
    assert np.array_equal(balanced_subset(labels, 100), np.arange(60))


def test_curves_plot_one_line_per_run(tmp_path, capsys):
    a = write_run(tmp_path / "bench" / "baseline" / "seed_0",
                  [{"step": s, "loss/ntp": 5 - s / 10} for s in (1, 2, 3)] + [{"step": 3, "val/nll_ema": 4.0}])
    b = write_run(tmp_path / "bench" / "mirai_i" / "seed_0",
                  [{"step": s, "loss/ntp": 4 - s / 10} for s in (1, 2, 3)])
    assert run_labels([a, b]) == ["baseline/seed_0", "mirai_i/seed_0"]
    curves = load_curves([a, b], "loss/ntp")
    assert curves["mirai_i/seed_0"] == ([1, 2, 3], [3.9, 3.8, 3.7])
    assert list(load_curves([a, b], "val/nll_ema")) == ["baseline/seed_0"]  # runs without the key are left out
    out = tmp_path / "figs" / "curves.png"
    assert main(["analyze", "curves", str(a), str(b), "--key", "loss/ntp", "--out", str(out), "--smooth", "0.5"]) == 0
    assert Image.open(out).size[0] > 100
    assert "mirai_i/seed_0: 3 points, last loss/ntp = 3.7 at step 3" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"no run logged 'val/nll'.*'loss/ntp'"):
        load_curves([a, b], "val/nll")
    with pytest.raises(DataError, match="no metrics.jsonl"):
        load_curves([tmp_path], "loss/ntp")
    assert smooth_ema([1.0, 3.0], 0.5) == pytest.approx([1.0, 7 / 3])  # debiased: the first value is kept


@pytest.fixture(scope="module")
def store_and_gpt(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-class store of 32 px images (committed 8x8 VQ) and an untrained GPT-Nano checkpoint for it."""
    root = tmp_path_factory.mktemp("tsne")
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.clip(rng.normal(40 + 90 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
                folder / f"{i}.png")
    vq_dir = ASSETS / "vq8"
    extract(checkpoint.load(vq_dir, kind="vq"), ImageFolder.scan(root / "images"), ViewSpec("flip", 32),
            root / "codes", tokenizer_path=vq_dir, progress=False)
    torch.manual_seed(0)
    gpt = build_gpt("GPT-Nano", vocab_size=512, grid_size=8, num_classes=3)
    checkpoint.save(root / "gpt", gpt, ema=gpt)
    return root / "codes", root / "gpt"


def test_tsne_maps_gpt_and_encoder_features(store_and_gpt, tmp_path, capsys):
    codes, gpt_dir = store_and_gpt
    out = tmp_path / "tsne.png"
    assert main(["analyze", "tsne", str(gpt_dir), "--codes", str(codes), "--layer", "1", "--encoder", "fashion8",
                 "--out", str(out), "--num-images", "24", "--k", "3"]) == 0
    assert Image.open(out).size[0] > 500  # two panels
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["num_images"] == 24 and report["layer"] == 1 and report["condition"] == "null"
    assert list(report["maps"]) == ["GPT block 1 (null class)", "encoder fashion8"]
    for scores in report["maps"].values():
        assert 0 <= scores["knn_features"] <= 1 and 0 <= scores["knn_map"] <= 1
    # The classes differ in brightness, which the encoder sees: its features separate them.
    assert report["maps"]["encoder fashion8"]["knn_features"] > 0.9
    assert "3-NN class accuracy" in capsys.readouterr().out

    assert main(["analyze", "tsne", str(gpt_dir), "--codes", str(codes), "--layer", "3", "--out", str(out)]) == 1
    assert "layer 3 is outside the model's blocks 1..2" in capsys.readouterr().err


def test_gpt_features_pool_token_positions_only(store_and_gpt):
    codes, gpt_dir = store_and_gpt
    gpt = checkpoint.load(gpt_dir, use_ema=True)
    store = CodeStore.open(codes)
    indices = np.arange(4)
    pooled = gpt_features(gpt, store, indices, layer=2, condition="label", batch_size=3)
    tokens = torch.from_numpy(np.asarray(store.codes[:4, 0], dtype=np.int64).reshape(4, -1))
    _, hidden = gpt(tokens[:, :-1], torch.from_numpy(store.labels[:4]), hidden_layers=(2,))
    np.testing.assert_allclose(pooled, hidden[2][:, 1:].mean(dim=1).detach().numpy(), rtol=1e-5, atol=1e-6)
    gpt.args.class_dropout_prob = 0.0
    with pytest.raises(ConfigError, match="no null class"):
        gpt_features(gpt, store, indices, layer=1)
