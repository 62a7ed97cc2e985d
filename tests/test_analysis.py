"""Analysis tools: training curves, t-SNE token maps (Fig. 9) with their smoothness score, and class maps
of GPT/encoder features with their k-NN figure of merit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirai import checkpoint
from mirai.analysis.classmap import balanced_subset, gpt_features, knn_accuracy
from mirai.analysis.curves import default_keys, load_curves, run_labels, smooth_ema
from mirai.analysis.tsne import cell_states, grid_colours, smoothness, tsne_maps
from mirai.cli.main import main
from mirai.data.codes import CodeStore, extract
from mirai.data.folders import ImageFolder
from mirai.data.views import ViewSpec
from mirai.errors import ConfigError, DataError
from mirai.foresight.encoders import ASSETS
from mirai.models import GPT, VQModel, build_gpt


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
    curves = load_curves([a, b], ["loss/ntp", "val/nll_ema"])
    assert curves["loss/ntp"]["mirai_i/seed_0"] == ([1, 2, 3], [3.9, 3.8, 3.7])
    assert list(curves["val/nll_ema"]) == ["baseline/seed_0"]  # runs without the key are left out
    out = tmp_path / "figs" / "curves.png"
    assert main(["analyze", "curves", str(a), str(b), "--key", "loss/ntp", "--out", str(out), "--smooth", "0.5"]) == 0
    assert Image.open(out).size[0] > 100
    assert "mirai_i/seed_0: 3 points, last loss/ntp = 3.7 at step 3" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"no run logged 'val/nll'.*'loss/ntp'"):
        load_curves([a, b], ["val/nll"])
    with pytest.raises(DataError, match="no metrics.jsonl"):
        load_curves([tmp_path], ["loss/ntp"])
    assert smooth_ema([1.0, 3.0], 0.5) == pytest.approx([1.0, 7 / 3])  # debiased: the first value is kept


def test_curves_default_to_ntp_head_losses_and_val_nll(tmp_path, capsys):
    heads = {f"foresight/loss{k}": -0.5 for k in (0, 1, 2, 10)}
    e = write_run(tmp_path / "mirai_e", [{"step": s, "loss/ntp": 5.0, "loss/total": 4.0, "lr": 1e-3,
                                          "foresight/lambda0": 1.0, **heads} for s in (1, 2)]
                  + [{"step": 2, "val/nll_ema": 4.5, "val/nll_raw": 4.6}])
    base = write_run(tmp_path / "baseline", [{"step": s, "loss/ntp": 5.5} for s in (1, 2)])
    expected = ["loss/ntp", "foresight/loss0", "foresight/loss1", "foresight/loss2", "foresight/loss10",
                "val/nll_ema"]
    assert default_keys({"loss/ntp", "foresight/loss10", "foresight/loss2", "foresight/loss0", "foresight/loss1",
                         "val/nll_ema", "lr", "foresight/lambda0"}) == expected
    out = tmp_path / "curves.png"
    assert main(["analyze", "curves", str(base), str(e), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for key in expected[:-1]:  # one panel per head loss found, all lines printed
        assert f"mirai_e: 2 points, last {key} = " in printed
    assert "mirai_e: 1 points, last val/nll_ema = 4.5 at step 2" in printed
    assert "baseline: 2 points, last loss/ntp = 5.5" in printed and "lr" not in printed
    assert list(load_curves([base, e])) == expected
    width, height = Image.open(out).size
    assert width > 1000 and height > 600  # 3 x 2 panels
    with pytest.raises(DataError, match=r"none of loss/ntp.*\['lr'\]"):
        load_curves([write_run(tmp_path / "odd", [{"step": 1, "lr": 1.0}])])


def test_smoothness_separates_smooth_fields_from_shuffled_ones():
    g = 12
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    field = np.stack([np.sin(rows / 4), np.cos(cols / 5), rows * cols / g**2, np.sin((rows + cols) / 6)], axis=-1)
    field = field @ np.random.default_rng(0).normal(size=(4, 32))  # smooth in (row, col), 32 features per cell
    shuffled = np.random.default_rng(1).permutation(field.reshape(g * g, -1)).reshape(g, g, -1)
    smooth, scrambled = smoothness(field), smoothness(shuffled)
    assert smooth < 0.3 and 0.8 < scrambled < 1.2
    assert smoothness(grid_colours(np.stack([rows, cols], axis=-1))) < 0.2  # a linear embedding stays smooth
    with pytest.raises(DataError, match="identical"):
        smoothness(np.ones((3, 3, 2)))


def test_grid_colours_give_corners_distinct_colours():
    coords = np.array([[[-5.0, 2.0], [7.0, 2.0]], [[-5.0, 10.0], [7.0, 10.0]]])  # the corners of the embedding
    colours = grid_colours(coords)
    assert colours.shape == (2, 2, 3) and colours.min() >= 0 and colours.max() <= 1
    corners = colours.reshape(4, 3)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(corners) for b in corners[i + 1:]) > 0.7
    np.testing.assert_allclose(grid_colours(coords * 3 + 1), colours)  # only the embedding's shape matters
    with pytest.raises(DataError, match=r"\(g, g, 2\)"):
        grid_colours(np.zeros((4, 2)))


@pytest.fixture(scope="module")
def store_and_gpt(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 3-class store of 32 px images (committed 8x8 VQ) and two untrained GPT-Nano checkpoints for it."""
    root = tmp_path_factory.mktemp("tsne")
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.clip(rng.normal(40 + 90 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
                folder / f"{i}.png")
    vq_dir = ASSETS / "vq8"
    extract(checkpoint.load(vq_dir, VQModel), ImageFolder.scan(root / "images"), ViewSpec("flip", 32),
            root / "codes", tokenizer_path=vq_dir, progress=False)
    for seed in (0, 1):
        torch.manual_seed(seed)
        gpt = build_gpt("GPT-Nano", vocab_size=512, grid_size=8, num_classes=3)
        checkpoint.save(root / f"gpt{seed}", gpt, ema=gpt)
    return root / "codes", root / "gpt0", root / "gpt1"


def test_cell_states_are_the_training_states_plus_the_last_cell(store_and_gpt):
    codes, gpt_dir, _ = store_and_gpt
    gpt = checkpoint.load(gpt_dir, GPT, use_ema=True)
    store = CodeStore.open(codes)
    tokens = torch.from_numpy(np.asarray(store.codes[:3, 0], dtype=np.int64).reshape(3, -1))
    labels = torch.from_numpy(store.labels[:3])
    states = cell_states(gpt, tokens, labels, layer=1)
    assert states.shape == (3, 64, gpt.args.dim)
    _, hidden = gpt.forward_with_hidden(tokens[:, :-1], labels, (1,))
    # Position c + 1 of the training forward has just read cell c; the last cell is read only here.
    torch.testing.assert_close(states[:, :63], hidden[1][:, 1:])
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 512
    assert not torch.allclose(cell_states(gpt, changed, labels, 1)[:, -1], states[:, -1])
    with pytest.raises(ConfigError, match="outside the model's blocks 1..2"):
        cell_states(gpt, tokens, labels, layer=3)


def test_tsne_maps_one_score_per_checkpoint(store_and_gpt, tmp_path, capsys):
    codes, gpt0, gpt1 = store_and_gpt
    out = tmp_path / "maps" / "maps.png"
    assert main(["analyze", "tsne", "--checkpoint", str(gpt0), "--checkpoint", str(gpt1), "--codes", str(codes),
                 "--labels", "baseline", "mirai_i", "--image-index", "0", "9", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width > 600 and height > 500  # image + 2 maps per row, 2 rows
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["maps"]) == ["baseline", "mirai_i"] and report["images"] == [0, 9]
    for label, path in (("baseline", gpt0), ("mirai_i", gpt1)):
        scores = report["maps"][label]
        assert scores["checkpoint"] == str(path) and scores["layer"] == 1  # 2/3 of GPT-Nano's 2 blocks
        assert len(scores["smoothness"]) == len(scores["smoothness_states"]) == 2
        assert all(0 < v < 2 for v in scores["smoothness"] + scores["smoothness_states"])
    assert report["maps"]["baseline"]["smoothness"] != report["maps"]["mirai_i"]["smoothness"]
    printed = capsys.readouterr().out
    assert "baseline (block 1): smoothness" in printed and "mean over 2 image(s)" in printed

    # Default labels are the checkpoint paths' distinct tails; the layer can be chosen.
    assert main(["analyze", "tsne", "--checkpoint", str(gpt0), "--checkpoint", str(gpt1), "--codes", str(codes),
                 "--layer", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["maps"]) == ["gpt0", "gpt1"] and report["maps"]["gpt1"]["layer"] == 2
    assert main(["analyze", "tsne", "--checkpoint", str(gpt0), "--codes", str(codes), "--image-index", "24",
                 "--out", str(out)]) == 1
    assert "image indices [24]: choose some in 0..23" in capsys.readouterr().err
    assert main(["analyze", "tsne", "--checkpoint", str(gpt0), "--codes", str(codes), "--labels", "a", "b",
                 "--out", str(out)]) == 1
    assert "1 checkpoints, 1 layers, 2 labels" in capsys.readouterr().err


def test_classmap_of_gpt_and_encoder_features(store_and_gpt, tmp_path, capsys):
    codes, gpt_dir, _ = store_and_gpt
    out = tmp_path / "classmap.png"
    assert main(["analyze", "classmap", str(gpt_dir), "--codes", str(codes), "--layer", "1", "--encoder",
                 "fashion8", "--out", str(out), "--num-images", "24", "--k", "3"]) == 0
    assert Image.open(out).size[0] > 500  # two panels
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["num_images"] == 24 and report["layer"] == 1 and report["condition"] == "null"
    assert list(report["maps"]) == ["GPT block 1 (null class)", "encoder fashion8"]
    for scores in report["maps"].values():
        assert 0 <= scores["knn_features"] <= 1 and 0 <= scores["knn_map"] <= 1
    # The classes differ in brightness, which the encoder sees: its features separate them.
    assert report["maps"]["encoder fashion8"]["knn_features"] > 0.9
    assert "3-NN class accuracy" in capsys.readouterr().out

    assert main(["analyze", "classmap", str(gpt_dir), "--codes", str(codes), "--layer", "3", "--out", str(out)]) == 1
    assert "layer 3 is outside the model's blocks 1..2" in capsys.readouterr().err


def test_gpt_features_pool_the_cell_states(store_and_gpt):
    codes, gpt_dir, _ = store_and_gpt
    gpt = checkpoint.load(gpt_dir, GPT, use_ema=True)
    store = CodeStore.open(codes)
    indices = np.arange(4)
    pooled = gpt_features(gpt, store, indices, layer=2, condition="label", batch_size=3)
    tokens = torch.from_numpy(np.asarray(store.codes[:4, 0], dtype=np.int64).reshape(4, -1))
    states = cell_states(gpt, tokens, torch.from_numpy(store.labels[:4]), layer=2)
    np.testing.assert_allclose(pooled, states.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    gpt.args.class_dropout_prob = 0.0
    with pytest.raises(ConfigError, match="no null class"):
        gpt_features(gpt, store, indices, layer=1)


def test_tsne_names_the_checkpoint_a_store_does_not_fit(store_and_gpt, tmp_path):
    codes, gpt0, _ = store_and_gpt
    torch.manual_seed(0)
    gpt = build_gpt("GPT-Nano", vocab_size=512, grid_size=16, num_classes=3)
    checkpoint.save(tmp_path / "gpt16", gpt, ema=gpt)
    with pytest.raises(DataError, match=r"the model in .*gpt16 has grid_size=16: re-run mirai extract") as caught:
        tsne_maps([gpt0, tmp_path / "gpt16"], codes, tmp_path / "maps.png", image_indices=[0],
                  labels=["fits", "does not"], device="cpu")
    assert "set model." not in str(caught.value)
