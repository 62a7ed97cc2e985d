"""Tokenizer training, its evaluation report, the k-means baseline and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mirai import checkpoint
from mirai.builders.tokenizer.evaluate import kmeans_baseline, reconstruction_report
from mirai.builders.tokenizer.train import (
    OptimSection,
    TokenizerTrainConfig,
    learning_rate,
    reseed_dead_codes,
    train_tokenizer,
)
from mirai.cli.main import main
from mirai.config import load_config
from mirai.errors import ConfigError
from mirai.models import VQModel, build_vq

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"


def _shapes(n: int, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST-like uint8 (n, 28, 28): bright rectangles on a black background."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image in images:
        top, left = rng.integers(2, 12, size=2)
        height, width = rng.integers(6, 14, size=2)
        image[top : top + height, left : left + width] = rng.integers(120, 255)
    return images


def _config(tmp_path, **overrides) -> TokenizerTrainConfig:
    data = {
        "out_dir": str(tmp_path / "run"), "steps": 30, "batch_size": 8, "restart_every": 10,
        "log_every": 5, "eval_every": 15, "checkpoint_every": 15,
        "model": {"name": "VQ-Tiny", "codebook_size": 16},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
    }
    data.update(overrides)
    return load_config(TokenizerTrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in data.items()])


def test_training_lowers_the_loss_and_writes_a_run(tmp_path):
    cfg = _config(tmp_path)
    model, report = train_tokenizer(cfg, _shapes(64), _shapes(16, seed=1), progress=False)
    run = Path(cfg.out_dir)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["recon"] for r in records if "recon" in r]
    assert losses[-1] < 0.5 * losses[0]
    # The held-out report is written, and the checkpoint rebuilds the trained model.
    saved = json.loads((run / "report.json").read_text())
    assert saved["psnr"] == pytest.approx(report["psnr"]) and saved["n_images"] == 16
    assert saved["grid"] == [16, 16]
    stored = checkpoint.read_checkpoint(run / "checkpoint")
    assert stored.kind == "vq" and stored.meta["step"] == 30
    assert stored.meta["val_report"]["psnr"] == pytest.approx(report["psnr"])
    loaded = checkpoint.load(run / "checkpoint", VQModel)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode_to_indices(x), model.encode_to_indices(x))
    assert (run / "config.yaml").is_file()


def test_adversarial_term_trains_a_discriminator(tmp_path):
    cfg = _config(tmp_path, steps=4, log_every=1, eval_every=4, checkpoint_every=4,
                  loss={"adversarial_weight": 0.1, "adversarial_start": 2})
    train_tokenizer(cfg, _shapes(16), _shapes(8, seed=1), progress=False)
    records = [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]
    steps_with_disc = [r["step"] for r in records if "disc" in r]
    assert steps_with_disc == [3, 4]


def test_dead_codes_move_onto_encoder_outputs_and_lose_their_momentum():
    model = build_vq("VQ-Tiny", codebook_size=8)
    quantizer = model.quantize
    opt = torch.optim.AdamW(model.parameters())
    quantizer.embedding.weight.sum().backward()
    opt.step()
    dead = torch.zeros(8, dtype=torch.bool)
    dead[[1, 5]] = True
    latents = torch.nn.functional.normalize(torch.randn(20, model.args.codebook_dim), dim=-1)
    before = quantizer.embedding.weight.detach().clone()
    assert reseed_dead_codes(quantizer, dead, latents, opt) == 2
    after = quantizer.embedding.weight.detach()
    assert torch.equal(after[~dead], before[~dead])
    for row in after[dead]:
        assert (latents - row).abs().sum(1).min() < 1e-6
    state = opt.state[quantizer.embedding.weight]
    assert state["exp_avg"][dead].abs().sum() == 0 and state["exp_avg"][~dead].abs().sum() > 0


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = OptimSection(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, cfg, 100) == pytest.approx(1e-4)
    assert learning_rate(9, cfg, 100) == pytest.approx(1e-3)
    assert learning_rate(55, cfg, 100) == pytest.approx(0.55e-3)
    assert learning_rate(100, cfg, 100) == pytest.approx(1e-4)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TokenizerTrainConfig, None, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="restart_stop"):
        load_config(TokenizerTrainConfig, None, ["restart_stop=1.5"])
    with pytest.raises(ConfigError, match="l2"):
        load_config(TokenizerTrainConfig, None, ["loss.recon=l3"])


@pytest.mark.parametrize("name, factor", [("fashion_vq8.yaml", 4), ("fashion_vq16.yaml", 2)])
def test_shipped_configs_build_their_tokenizer(name, factor):
    cfg = load_config(TokenizerTrainConfig, CONFIGS / name)
    model = build_vq(cfg.model.name, cfg.model.codebook_size, cfg.model.codebook_dim, **cfg.model.arch)
    assert model.downsample_factor == factor


def test_kmeans_baseline_exact_with_enough_codes_and_mean_with_one():
    # Four distinct 2x2 patches tile every image, so four centres reconstruct exactly.
    tiles = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, 1.0],
                          [0.0, 0.5, -0.5, 0.0]])
    labels = torch.randint(0, 4, (20, 4, 4))
    grey = tiles[labels].reshape(20, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(20, 1, 8, 8)
    images = grey.repeat(1, 3, 1, 1)
    exact = kmeans_baseline(images[:16], images[16:], patch=2, codebook_size=4)
    assert exact["mse"] < 1e-10 and exact["grid"] == [4, 4] and exact["codes_used"] == 4
    single = kmeans_baseline(images, images, patch=2, codebook_size=1)
    patches = grey.reshape(20, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, 4)
    expected = ((patches - patches.mean(0)) / 2).pow(2).reshape(20, -1).mean(1).mean()
    assert single["mse"] == pytest.approx(expected.item(), rel=1e-4)
    assert single["perplexity"] == pytest.approx(1.0)


def test_reconstruction_report_counts_codes_and_matches_psnr():
    model = build_vq("VQ-Tiny", codebook_size=16).eval()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    report = reconstruction_report(model, x, batch_size=4, progress=False)
    indices = model.encode_to_indices(x)
    assert report["codes_used"] == len(indices.unique()) and report["grid"] == [8, 8]
    errors = ((model.decode_indices(indices).clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)
    assert report["mse"] == pytest.approx(errors.mean().item(), rel=1e-5)
    assert report["psnr"] == pytest.approx((-10 * errors.log10()).mean().item(), rel=1e-5)
    assert 1.0 <= report["perplexity"] <= report["codes_used"]


def test_cli_train_and_eval(tmp_path, monkeypatch, capsys):
    import mirai.builders.tokenizer.train as train_module

    # The CLI reads Fashion-MNIST; hand it small synthetic images instead.
    monkeypatch.setattr(train_module, "fashion_mnist_images",
                        lambda split, root=None: _shapes(40 if split == "train" else 12, seed=len(split)))
    config = tmp_path / "vq.yaml"
    config.write_text("model: {name: VQ-Tiny, codebook_size: 8}\ndata: {val_size: 8}\n")
    out = tmp_path / "run"
    assert main(["tokenizer", "train", "--config", str(config), f"out_dir={out}", "steps=3", "batch_size=8",
                 "--no-progress"]) == 0
    assert "held-out PSNR" in capsys.readouterr().out
    report_file = tmp_path / "eval.json"
    assert main(["tokenizer", "eval", "--checkpoint", str(out / "checkpoint"), "--kmeans",
                 "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["vq"]["n_images"] == 12 and report["vq"]["grid"] == [16, 16]
    assert report["kmeans"]["grid"] == [16, 16] and report["kmeans"]["codebook_size"] == 8
    assert main(["tokenizer", "train", "--config", str(config), "steps=0"]) == 1
    assert "steps must be positive" in capsys.readouterr().err
