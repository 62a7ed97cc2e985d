"""``mirai demo`` end to end on a per-class subset of the real Fashion-MNIST (CPU, offline)."""

from __future__ import annotations

import json

import pytest

from mirai.cli.main import main
from mirai.data import fashion_mnist as fm

HAVE_FASHION_MNIST = all((fm.DEBIAN_ROOT / f"{s}.gz").is_file() for pair in fm.FILES.values() for s in pair)


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="dataset-fashion-mnist not installed")
def test_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "4", "--num-samples", "40", "--per-class", "4", "--device", "cpu",
            "optim.batch_size=8", "data.val_images=40", "sampling.cfg_scale=1.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "mirai_i" in printed and "noise floor" in printed
    for variant in ("baseline", "mirai_i"):
        report = json.loads((out / variant / "evaluation.json").read_text())
        assert report["num_samples"] == 40 and report["num_reference"] == 10_000
        assert 0 <= report["metrics"]["class_accuracy"] <= 1 and report["metrics"]["fid"] > 0
        assert report["val_nll_ema"] is not None
        assert all((out / variant / "samples" / f"final.{kind}").is_file() for kind in ("png", "pdf"))
        assert report["noise_floor"]["num_images"] == 40  # the floor at the demo's sample count
        assert (out / variant / "checkpoints" / "step_0000004").is_dir()
    assert "Fashion-MNIST demo" in (out / "results.md").read_text()
    assert "| noise floor (40 real) |" in (out / "results.md").read_text()
    # A second run finds every stage done: nothing is retrained or resampled.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "results.md"}
    assert main(argv) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # Other settings in the same folder are refused before the new subset is tokenized, and nothing changes.
    other = [{"4": "5"}.get(a, a) for a in argv]  # --steps 5 --per-class 5
    assert main(other) == 1
    assert "trained with another config" in capsys.readouterr().err
    assert not (out / "codes" / "train_5_per_class").exists()
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
