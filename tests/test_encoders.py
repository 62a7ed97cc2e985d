"""Foresight encoders: timm ViTs from local files at another grid, the Fashion-MNIST encoder,
feature caching and the linear probe. CPU-only and offline (tiny random ViTs, no hub)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from mirai import checkpoint
from mirai.builders.encoder import matching_cells, random_crops
from mirai.builders.encoder_probe import fit_linear_probe, pooled_features
from mirai.errors import CheckpointError, ConfigError
from mirai.foresight.encoders import (
    FASHION_ASSETS, FrozenEncoder, GridNetEncoder, TimmEncoder, build_encoder, cache_features,
)
from mirai.models.fashion_encoder import FashionEncoderArgs, FashionEncoderNet

TINY = {"depth": 1, "embed_dim": 48, "num_heads": 2}


def _tiny_vit(name: str = "vit_small_patch14_dinov2", grid: int = 6):
    return timm.create_model(name, pretrained=False, img_size=14 * grid, num_classes=0, **TINY).eval()


@pytest.fixture
def saved_vit(tmp_path):
    """A tiny DINOv2-shaped ViT saved at a 6×6 grid (84 px), with a randomised pos-embed."""
    model = _tiny_vit()
    with torch.no_grad():
        model.pos_embed.normal_()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_pos_embed_resampled_to_the_token_grid(saved_vit):
    model, path = saved_vit
    enc = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY}, grid_size=4)
    assert isinstance(enc, TimmEncoder) and enc.input_size == 56
    assert enc.model.pos_embed.shape == (1, 1 + 16, 48)
    expected = resample_abs_pos_embed(model.pos_embed, new_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(enc.model.pos_embed, expected)
    # Everything else is copied unchanged.
    torch.testing.assert_close(enc.model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_timm_encoder_output_is_normalised_patch_tokens(saved_vit):
    model, path = saved_vit
    enc = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY}, grid_size=4)
    images = torch.rand(2, 3, 40, 40)
    out = enc(images)
    assert out.shape == (2, 16, 48) and out.dtype == torch.float32
    # Reference: bicubic resize to 14*g, ImageNet normalisation, final-norm tokens minus CLS.
    x = F.interpolate(images, size=(56, 56), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    ref = enc.model.forward_features(x)[:, 1:]
    torch.testing.assert_close(out, ref)
    # The final LayerNorm has unit weight at init: each token is standardised.
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 16), atol=1e-4, rtol=0)


def test_encoder_is_frozen_and_stays_in_eval(saved_vit):
    _, path = saved_vit
    enc = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY}, grid_size=4)
    assert all(not p.requires_grad for p in enc.parameters())
    parent = torch.nn.ModuleDict({"enc": enc, "head": torch.nn.Linear(2, 2)})
    parent.train()
    assert not enc.training and not enc.model.training and parent["head"].training
    images = torch.rand(1, 3, 56, 56, requires_grad=True)
    out = enc(images)
    assert not out.requires_grad and out.grad_fn is None


def test_register_tokens_are_dropped(tmp_path):
    model = _tiny_vit("vit_small_patch14_reg4_dinov2", grid=3)
    path = tmp_path / "reg.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = build_encoder({"name": "dinov2_vits14_reg", "weights": str(path), "model_args": TINY}, grid_size=5)
    assert enc.model.num_prefix_tokens == 5
    assert enc(torch.rand(2, 3, 70, 70)).shape == (2, 25, 48)


def test_meta_dinov2_layout_in_wrapped_pth(tmp_path, saved_vit):
    """Meta's released files carry a mask_token; a .pth may wrap the state dict under 'model'."""
    model, _ = saved_vit
    state = dict(model.state_dict(), mask_token=torch.zeros(1, 48))
    path = tmp_path / "meta.pth"
    torch.save({"model": state}, path)
    enc = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY}, grid_size=6)
    torch.testing.assert_close(enc.model.pos_embed, model.pos_embed)  # same grid: untouched


def test_intermediate_layer(saved_vit):
    _, path = saved_vit
    enc = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY, "layer": 1},
                        grid_size=6)
    x = torch.rand(1, 3, 84, 84)
    full = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY}, grid_size=6)(x)
    mid = enc(x)
    assert mid.shape == full.shape
    # The raw block output is not LayerNormed; the final tokens are, so they differ by exactly that norm.
    torch.testing.assert_close(F.layer_norm(mid, (48,)), F.layer_norm(full, (48,)), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mid, full, atol=1e-3)
    with pytest.raises(ConfigError, match="layer"):
        build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY, "layer": 2}, 6)


def test_bad_weights_are_refused(tmp_path, saved_vit):
    _, path = saved_vit
    with pytest.raises(CheckpointError, match="does not fit"):
        build_encoder({"name": "dinov2_vits14", "weights": str(path),
                       "model_args": {**TINY, "embed_dim": 64}}, grid_size=4)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)}, pickled)
    with pytest.raises(CheckpointError, match="not loaded"):
        build_encoder({"name": "dinov2_vits14", "weights": str(pickled), "model_args": TINY}, grid_size=4)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_encoder({"name": "dinov2_vits14", "weights": str(tmp_path / "missing.safetensors")}, 4)


def test_spec_errors(saved_vit):
    _, path = saved_vit
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_encoder("not_a_model_anywhere", 4)
    with pytest.raises(ConfigError, match="unknown key"):
        build_encoder({"name": "dinov2_vits14", "weigths": "x"}, 4)
    with pytest.raises(ConfigError, match="which architecture"):
        build_encoder(str(path), 4)
    with pytest.raises(ConfigError, match="ViT"):
        build_encoder({"name": "resnet18", "pretrained": False}, 4)


def test_pretrained_offline_says_what_to_do():
    with pytest.raises(CheckpointError, match="weights"):
        build_encoder("dinov2_vits14", 4)


def test_tokenizer_range_input_is_rejected(saved_vit):
    _, path = saved_vit
    enc = build_encoder({"name": "dinov2_vits14", "weights": str(path), "model_args": TINY}, grid_size=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        enc(torch.rand(1, 3, 56, 56) * 2 - 1)


# ---------------------------------------------------------------------------- Fashion-MNIST encoder
def test_fashion_checkpoint_roundtrip(tmp_path):
    net = FashionEncoderNet(FashionEncoderArgs(grid=16, width=16, dim=32, res_blocks=1, heads=2)).eval()
    checkpoint.save(tmp_path / "enc", net, meta={"note": "test"})
    enc = build_encoder(str(tmp_path / "enc"), grid_size=16)
    assert isinstance(enc, GridNetEncoder) and enc.feature_dim == 32
    x = torch.rand(3, 3, 32, 32)
    ref = net(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(enc(x), ref)
    # One model serves a coarser grid by average pooling its 16×16 map.
    coarse = build_encoder(str(tmp_path / "enc"), grid_size=8)(x)
    torch.testing.assert_close(coarse, F.avg_pool2d(net(x), 2).flatten(2).transpose(1, 2))
    with pytest.raises(ConfigError, match="integer factor"):
        build_encoder(str(tmp_path / "enc"), grid_size=12)


@pytest.mark.parametrize("objective", ["ssl", "supervised"])
def test_the_label_free_objective_never_reads_a_label(objective, monkeypatch):
    """Issue 16's question, whether a label reaches the label-free encoder: shuffled labels change
    nothing under ``ssl`` (bit-identical weights) and change the supervised encoder (the control)."""
    import mirai.builders.encoder as builder

    images = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 10
    cfg = builder.FashionTrainConfig(objective=objective, epochs=0.25, batch_size=4, width=8, dim=16)

    def weights(labels):
        monkeypatch.setattr(builder, "load_fashion_images", lambda split, root=None: (images, labels))
        net, log = builder.train_fashion_encoder(cfg)
        assert log["steps"] == 2
        return net.state_dict()

    first, shuffled = weights(labels), weights(labels[torch.randperm(32, generator=torch.Generator().manual_seed(1))])
    same = all(torch.equal(first[k], shuffled[k]) for k in first)
    assert same is (objective == "ssl")


@pytest.mark.parametrize(("argv", "asset"), [([], "encoder8_ssl"), (["--objective", "ssl"], "encoder8_ssl"),
                                            (["--objective", "supervised"], "encoder8")])
def test_train_fashion_defaults_are_the_committed_recipes(argv, asset, monkeypatch, tmp_path):
    """`mirai encoder train-fashion` with no flags trains the label-free default encoder's recipe;
    `--objective supervised` the labelled one's (its own epochs and crop area, not the other's)."""
    import mirai.builders.encoder as builder
    from mirai.cli.main import main

    seen = {}

    def stop(cfg, root=None):
        seen["cfg"] = dataclasses.asdict(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(builder, "train_fashion_encoder", stop)
    with pytest.raises(SystemExit):
        main(["encoder", "train-fashion", "--out", str(tmp_path / "enc"), *argv])
    recipe = json.loads((FASHION_ASSETS["fashion8"].parent / asset / "config.json").read_text())["meta"]
    assert seen["cfg"] == recipe["train_config"]
    with pytest.raises(ConfigError, match="objective must be 'ssl' or 'supervised'"):
        builder.FashionTrainConfig(objective="dino")
    # The recipe is read when training starts, so a replaced objective brings its own.
    labelled = dataclasses.replace(builder.FashionTrainConfig(), objective="supervised").resolved()
    assert (labelled.epochs, labelled.crop_min) == (3.0, 0.8)
    assert builder.FashionTrainConfig(epochs=1.5).resolved().epochs == 1.5


@pytest.mark.parametrize(("name", "uses_labels"), [("fashion8", True), ("fashion8_supervised", True),
                                                  ("fashion8_ssl", False)])
def test_committed_fashion_encoders(name, uses_labels):
    meta = json.loads((FASHION_ASSETS[name] / "config.json").read_text())["meta"]
    assert meta["uses_labels"] is uses_labels  # what the encoder saw is recorded, and the name says it
    assert (meta["train_config"]["objective"] == "ssl") is not uses_labels
    enc = build_encoder(name, grid_size=8)
    assert isinstance(enc, FrozenEncoder) and enc.grid_size == 8
    assert all(not p.requires_grad for p in enc.parameters()) and not enc.training
    out = enc(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 64, enc.feature_dim) and torch.isfinite(out).all()


def test_cache_features_matches_direct_calls():
    net = FashionEncoderNet(FashionEncoderArgs(width=16, dim=32, res_blocks=1, heads=2))
    enc = GridNetEncoder(net, 8)
    images = torch.rand(10, 3, 32, 32)
    cached = cache_features(enc, (images[i:i + 4] for i in range(0, 10, 4)), 10)
    assert cached.shape == (10, 64, 32) and cached.dtype == torch.float16
    torch.testing.assert_close(cached.float(), enc(images), atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="yielded 10"):
        cache_features(enc, iter([images]), 12)


def test_matching_cells_geometry():
    gen = torch.Generator().manual_seed(0)
    theta = random_crops(5, gen)
    cells, where, valid = matching_cells(theta, theta, grid=8, per_image=6, generator=gen)
    centres = (torch.arange(8) * 2 + 1) / 8 - 1
    # Same view: every chosen cell is found at its own centre.
    torch.testing.assert_close(where[..., 0], centres[cells % 8], atol=1e-5, rtol=0)
    torch.testing.assert_close(where[..., 1], centres[cells // 8], atol=1e-5, rtol=0)
    # A horizontally flipped full view: cell (r, c) is seen at column 7 - c.
    full = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]])
    flipped = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]])
    cells, where, valid = matching_cells(full, flipped, grid=8, per_image=64, generator=gen)
    assert valid.all()
    torch.testing.assert_close(where[0, :, 0], centres[7 - cells[0] % 8], atol=1e-5, rtol=0)


def test_linear_probe_fit_separates_synthetic_classes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 3
    y = torch.randint(0, 4, (400,), generator=gen)
    x = centres[y] + torch.randn(400, 16, generator=gen)
    result = fit_linear_probe(x[:300], y[:300], x[300:], y[300:])
    assert result["test_accuracy"] > 0.95
    shuffled = fit_linear_probe(x[:300], y[:300][torch.randperm(300, generator=gen)], x[300:], y[300:])
    assert shuffled["test_accuracy"] < 0.6  # labels carry the signal, not the fitting procedure


def _fashion_available() -> bool:
    from mirai.data.fashion_mnist import resolve_root
    from mirai.errors import DataError

    try:
        resolve_root(allow_download=False)
    except DataError:
        return False
    return True


@pytest.mark.skipif(not _fashion_available(), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("name", ["fashion8", "fashion8_ssl"])
def test_committed_encoder_probe_on_real_images(name):
    from mirai.builders.encoder import load_fashion_images

    images, labels = load_fashion_images("test")
    enc = build_encoder(name, grid_size=8)
    feats = pooled_features(enc, images[:800].expand(-1, 3, -1, -1))
    result = fit_linear_probe(feats[:500], labels[:500], feats[500:], labels[500:800])
    # Chance is 0.1; the same network untrained scores 0.63 here, the committed ones about 0.85.
    assert result["test_accuracy"] > 0.78, result
    assert not math.isnan(result["train_accuracy"])


def test_encoder_info_reports_a_checkpoints_own_grid(capsys):
    from mirai.cli.main import main

    assert main(["encoder", "info", "fashion/encoder8"]) == 0  # was 16x16 by default for the 8x8 encoder
    assert "grid 8×8" in capsys.readouterr().out
    assert main(["encoder", "info", "fashion/encoder8", "--grid", "16"]) == 0
    assert "grid 16×16" in capsys.readouterr().out


def test_misspelt_and_unservable_encoders_are_refused_with_the_fix(capsys):
    from mirai.cli.main import main

    for typo, suggestion in (("fashion8-ssl", "fashion8_ssl"), ("FASHION8_SSL", "fashion8_ssl"),
                             ("fashion/encoder8-ssl", "fashion/encoder8_ssl")):
        with pytest.raises(ConfigError, match=rf"did you mean '{suggestion}'\?.*the committed ones are \["):
            build_encoder(typo, grid_size=8)
    with pytest.raises(ConfigError, match=r"12×12 by an integer factor: it serves token grids 1, 2, 4, 8, 16, "
                                          r"32, \.\.\.; choose another foresight.encoder"):
        build_encoder("fashion8_ssl", grid_size=12)
    assert main(["flops", "--model", "GPT-Micro", "--grid", "8", "--vocab", "512", "--classes", "10",
                 "--encoder", "fashion8-ssl"]) != 0
    assert "unknown encoder 'fashion8-ssl'" in capsys.readouterr().err
    for name in ("fashion8_ssl", "fashion/encoder8_ssl"):  # a short name reports its asset's own grid too
        assert main(["encoder", "info", name]) == 0
        assert "grid 8×8" in capsys.readouterr().out


def test_pretrained_weights_that_cannot_be_fetched_name_the_fixes(monkeypatch):
    """Offline (or a Hub error), a timm encoder's refusal says how to pass local weights and, for
    Fashion-MNIST users, which committed encoder needs no download."""
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We cannot find the requested files in the local cache.")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError, match=r"could not fetch the pretrained weights of vit_small_patch14_dinov2"
                                              r".*'weights': '/path/to/file.safetensors'.*foresight.encoder=fashion8_ssl"):
        build_encoder("dinov2_vits14", 2)
