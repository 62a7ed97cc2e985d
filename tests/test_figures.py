"""Figures fit for a paper: every figure also as PDF, class names and settings on sample grids, curves
coloured by variant with seeds as a band, labelled axes, a colour key on t-SNE maps; and the noise floor
taken at the sample count being scored. The matplotlib objects are inspected, not the pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mirai import figures
from mirai.analysis import classmap as classmap_module
from mirai.analysis import curves as curves_module
from mirai.analysis import tsne as tsne_module
from mirai.bench import report as report_module
from mirai.bench.config import BenchConfig
from mirai.config import from_dict
from mirai.data.fashion_mnist import CLASS_NAMES
from mirai.evaluation.reference import FeatureSet
from mirai.evaluation.suite import noise_floor
from mirai.sampling import grid as grid_module
from mirai.sampling.pipeline import SampleSettings


@pytest.fixture
def drawn(monkeypatch):
    """The figures the code under test saves (it still writes them), in order."""
    saved = []
    original = figures.save_figure

    def keep(fig, out, *args, **kwargs):
        saved.append(fig)
        return original(fig, out, *args, **kwargs)

    for module in (figures, curves_module, tsne_module, classmap_module, report_module):
        monkeypatch.setattr(module, "save_figure", keep, raising=False)
    return saved


def assert_png_and_pdf(png):
    assert Image.open(png).format == "PNG"
    assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda artist: hasattr(artist, "get_text"))]


def test_sample_grid_names_each_class_row_and_says_how_it_was_sampled(tmp_path, drawn):
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat([3, 7], 10)
    settings = SampleSettings(cfg_scale=1.5, temperature=0.9, top_k=50)
    paths = grid_module.write_sample_grid(images, labels, tmp_path / "grid.png", "mirai_i (seed 0)", 400,
                                          settings, CLASS_NAMES)
    assert paths == [tmp_path / "grid.png", tmp_path / "grid.pdf"]
    assert_png_and_pdf(tmp_path / "grid.png")
    fig = drawn[0]
    assert fig._suptitle.get_text() == ("mirai_i (seed 0), step 400\n"
                                       "guidance 1.5, temperature 0.9, top-k 50, top-p off")
    shown = texts(fig)
    assert "Dress" in shown and "Sneaker" in shown  # Fashion-MNIST's names of classes 3 and 7
    assert len([ax for ax in fig.axes if ax.images]) == 20
    # Without names, rows carry the class index (ImageNet's convention); more classes than rows are said.
    grid_module.write_sample_grid(images, np.arange(20), tmp_path / "many.png", "c2i_B_256.pt", None,
                                  SampleSettings(), per_row=1)
    many = drawn[1]
    assert "class 0" in texts(many) and "class 19" in texts(many)
    assert "first 20 of 20" not in many._suptitle.get_text()
    rows, count = figures.class_rows(np.concatenate([images, images]), np.arange(40), per_row=1)
    assert count == 40 and len(rows) == figures.MAX_GRID_ROWS


def test_checkpoint_details_read_step_and_class_names_of_a_training_checkpoint(tmp_path):
    store = tmp_path / "codes"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"class_names": ["cat", "dog"]}))
    ckpt = tmp_path / "step_0000005"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"meta": {"step": 5}}))
    (ckpt / "train_config.yaml").write_text(f"data:\n  codes: {store}\n")
    assert grid_module.checkpoint_details(ckpt) == (5, ["cat", "dog"])
    assert grid_module.checkpoint_details(tmp_path / "c2i_B_256.pt") == (None, None)  # a LlamaGen file
    assert grid_module.checkpoint_label(tmp_path / "run" / "checkpoints" / "step_0000005") == "run"
    assert grid_module.checkpoint_label(tmp_path / "c2i_B_256.pt") == "c2i_B_256.pt"


def write_run(run_dir, offset, seed):
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    records = [{"step": s, "loss/ntp": 4 - s / 10 + offset + rng.normal(0, 0.05),
                "foresight/loss0": -0.5 - s / 100 + rng.normal(0, 0.01)} for s in range(1, 11)]
    records += [{"step": s, "val/nll_ema": 4 - s / 10 + offset + seed / 100} for s in (5, 10)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_curves_colour_by_variant_with_seeds_as_a_band(tmp_path, drawn):
    runs = [write_run(tmp_path / variant / f"seed_{seed}", offset, seed)
            for variant, offset in (("baseline", 0.2), ("mirai_i", 0.0)) for seed in (0, 1, 2)]
    curves_module.plot_curves(runs, tmp_path / "curves.png")
    assert_png_and_pdf(tmp_path / "curves.png")
    fig = drawn[0]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["loss/ntp", "foresight/loss0", "val/nll_ema"]
    for ax in panels:  # one quantity per panel, axes labelled with units; one line and one band per variant
        assert ax.get_xlabel() == "training step" and ax.get_ylabel()
        assert len(ax.lines) == 2 and len(ax.collections) == 2
        assert ax.lines[0].get_color() != ax.lines[1].get_color()
    assert panels[0].get_ylabel() == "next-token loss (nats/token)"
    assert "cosine" in panels[1].get_ylabel()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["baseline (3 runs)", "mirai_i (3 runs)"]
    assert "standard deviation" in legend.get_title().get_text()
    # The line is the mean over seeds (0, 1, 2: +0.01 on average).
    steps, values = panels[2].lines[0].get_data()
    assert list(steps) == [5, 10] and values[0] == pytest.approx(4 - 0.5 + 0.2 + 0.01)


def test_tsne_maps_carry_a_colour_key_and_wrapped_titles(tmp_path, drawn):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    maps = {"baseline": [np.random.default_rng(0).random((4, 4, 3))]}
    long = "a very long checkpoint label that would not fit over one panel"
    tsne_module.plot_token_maps([("image 0: Dress", pixels)], maps, {"baseline": [f"{long}\nblock 1"]},
                                tmp_path / "maps.png")
    assert_png_and_pdf(tmp_path / "maps.png")
    fig = drawn[0]
    key = next(ax for ax in fig.axes if ax.get_title() == "colour key")
    assert "t-SNE dim 1" in key.get_xlabel() and "t-SNE dim 2" in key.get_ylabel()
    assert np.allclose(key.images[0].get_array()[-1, 0], [0, 0, 1])  # bottom left: both t-SNE dims low = blue
    title = next(ax.get_title() for ax in fig.axes if "block 1" in ax.get_title())
    assert max(len(line) for line in title.split("\n")) <= 30 and long.split()[0] in title


def test_class_maps_have_a_class_colour_key(tmp_path, drawn):
    points = np.random.default_rng(0).normal(size=(40, 2))
    labels = np.arange(40) % 4
    classmap_module.plot_class_maps({"GPT block 1": points}, labels, list(CLASS_NAMES[:4]),
                                    {"GPT block 1": {"k": 3, "knn_features": 0.5, "knn_map": 0.25}},
                                    tmp_path / "classes.png")
    assert_png_and_pdf(tmp_path / "classes.png")
    legend = drawn[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(CLASS_NAMES[:4])
    assert legend.get_title().get_text() == "colour: class"


def test_fid_figure_has_one_quantity_per_panel_with_seed_bands_and_floors(tmp_path, drawn):
    bench = from_dict(BenchConfig, {"variants": {"baseline": [], "mirai_i": []}, "train_config": "x.yaml",
                                    "seeds": [0, 1], "steps": 10, "eval_at": [2, 4, 6, 8], "reference_codes": "x"})

    def record(seed, step, fid):
        return {"seed": seed, "step": step, "fid": fid, "fid_recon": fid / 2, "class_accuracy": 0.5 + seed / 10}

    results = {name: [record(seed, step, 100 / step + shift + seed) for seed in (0, 1) for step in bench.schedule()]
               for name, shift in (("baseline", 5), ("mirai_i", 0))}
    floor = {"fid": 1.0, "class_accuracy": 0.9, "num_images": 12}
    report_module.plot_fid(bench, results, {"noise_floor": floor, "tokenizer_floor": floor}, tmp_path / "fid.png")
    assert_png_and_pdf(tmp_path / "fid.png")
    fig = drawn[0]
    assert [ax.get_ylabel() for ax in fig.axes] == [label for _, label in report_module.FID_PANELS]
    for ax in fig.axes:
        assert ax.get_xlabel() == "training step" and len(ax.collections) == 2  # a band per variant
        assert len(ax.lines[0].get_xdata()) == 5  # five checkpoints
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["baseline", "mirai_i"] and "noise floor (12 real images)" in labels
    # The FID panel marks the baseline's final FID (mean over seeds) and half the schedule.
    assert "baseline's final FID" in labels and "half the steps" in labels
    marks = {line.get_label(): line for line in fig.axes[0].lines}
    assert marks["baseline's final FID"].get_ydata()[0] == pytest.approx(100 / 10 + 5 + 0.5)
    assert marks["half the steps"].get_xdata()[0] == 5
    assert not any(line.get_label() == "half the steps" for ax in fig.axes[1:] for line in ax.lines)


def test_a_figure_redrawn_from_the_same_data_is_the_same_file(tmp_path):
    # A report rerun on the same records must not show every committed PDF as changed (no date stamped in).
    import matplotlib.pyplot as plt

    contents = []
    for attempt in ("first", "second"):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [3, 1, 2])
        paths = figures.save_figure(fig, tmp_path / attempt / "fig.png")
        plt.close(fig)
        contents.append([path.read_bytes() for path in paths])
    assert contents[0] == contents[1]
    assert b"CreationDate" not in contents[0][1]


def test_noise_floor_is_taken_at_the_sample_count():
    rng = np.random.default_rng(0)
    ref = FeatureSet.from_features({"pool": rng.normal(size=(4000, 16)).astype(np.float32)})
    fids = {n: noise_floor(ref, num_images=n)["fid"] for n in (100, 500, 2000)}
    assert fids[100] > fids[500] > fids[2000] > 0  # fewer samples: a larger floor
    floor = noise_floor(ref, num_images=3000)
    assert (floor["num_images"], floor["num_reference"], floor["capped"]) == (2000, 2000, True)
    assert noise_floor(ref, num_images=100)["num_reference"] == 3900
