"""The VQ tokenizer: LlamaGen's parameter layout, LlamaGen files, encode/decode, committed assets."""

from pathlib import Path

import pytest
import torch

import mirai
from mirai import checkpoint
from mirai.errors import CheckpointError, ConfigError
from mirai.models import VQModel, build_vq, vq_from_llamagen_state
from mirai.models.vq import USAGE_HISTORY

ASSETS = Path(mirai.__file__).parent / "assets" / "fashion"

# A hand-written subset of LlamaGen's VQ-16 state dict (vq_ds16_c2i.pt): name -> shape.
LLAMAGEN_VQ16 = {
    "quantize.embedding.weight": (16384, 8),
    "quantize.codebook_used": (65536,),
    "quant_conv.weight": (8, 256, 1, 1),
    "quant_conv.bias": (8,),
    "post_quant_conv.weight": (256, 8, 1, 1),
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.conv_blocks.0.res.0.norm1.weight": (128,),
    "encoder.conv_blocks.0.res.0.conv1.weight": (128, 128, 3, 3),
    "encoder.conv_blocks.0.res.1.conv2.bias": (128,),
    "encoder.conv_blocks.0.downsample.conv.weight": (128, 128, 3, 3),
    "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
    "encoder.conv_blocks.3.downsample.conv.weight": (256, 256, 3, 3),
    "encoder.conv_blocks.4.res.0.nin_shortcut.weight": (512, 256, 1, 1),
    "encoder.conv_blocks.4.attn.1.proj_out.weight": (512, 512, 1, 1),
    "encoder.mid.0.conv1.weight": (512, 512, 3, 3),
    "encoder.mid.1.q.weight": (512, 512, 1, 1),
    "encoder.mid.1.norm.bias": (512,),
    "encoder.mid.2.conv2.weight": (512, 512, 3, 3),
    "encoder.norm_out.weight": (512,),
    "encoder.conv_out.weight": (256, 512, 3, 3),
    "decoder.conv_in.weight": (512, 256, 3, 3),
    "decoder.mid.1.v.weight": (512, 512, 1, 1),
    "decoder.conv_blocks.0.res.2.conv1.weight": (512, 512, 3, 3),
    "decoder.conv_blocks.0.attn.2.k.weight": (512, 512, 1, 1),
    "decoder.conv_blocks.0.upsample.conv.weight": (512, 512, 3, 3),
    "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.conv_blocks.3.res.0.nin_shortcut.weight": (128, 256, 1, 1),
    "decoder.conv_blocks.3.upsample.conv.weight": (128, 128, 3, 3),
    "decoder.conv_blocks.4.res.2.conv2.weight": (128, 128, 3, 3),
    "decoder.norm_out.bias": (128,),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}
# Names that LlamaGen's layout does not have (no attention above the lowest resolution,
# no resampling past the last level, no shortcut where the width stays the same).
NOT_IN_LLAMAGEN_VQ16 = [
    "encoder.conv_blocks.4.downsample.conv.weight",
    "encoder.conv_blocks.3.attn.0.q.weight",
    "decoder.conv_blocks.4.upsample.conv.weight",
    "decoder.conv_blocks.1.attn.0.q.weight",
    "encoder.conv_blocks.0.res.0.nin_shortcut.weight",
    "encoder.conv_blocks.0.res.2.conv1.weight",
]


def test_vq16_state_dict_matches_llamagen_layout():
    with torch.device("meta"):
        model = build_vq("VQ-16")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in LLAMAGEN_VQ16.items():
        assert shapes.get(key) == shape, key
    for key in NOT_IN_LLAMAGEN_VQ16:
        assert key not in shapes
    # LlamaGen's VQ-16 has about 72M parameters; the history buffer is not a parameter.
    n_params = sum(p.numel() for p in model.parameters())
    assert 71.5e6 < n_params < 72.5e6
    assert model.downsample_factor == 16


def test_vq8_downsamples_by_8():
    with torch.device("meta"):
        model = build_vq("VQ-8")
    assert model.downsample_factor == 8
    assert "encoder.conv_blocks.3.attn.0.q.weight" in model.state_dict()


def _llamagen_file(tmp_path, model: VQModel) -> Path:
    """Save ``model`` the way LlamaGen's trainer does: torch.save({"model": state_dict})."""
    state = model.state_dict()
    state["quantize.codebook_used"] = torch.randint(0, model.codebook_size, (USAGE_HISTORY,)).float()
    path = tmp_path / "vq.pt"
    torch.save({"model": state}, path)
    return path


def test_llamagen_state_dict_loads_strictly_with_inferred_config(tmp_path):
    # LlamaGen-style: 32 GroupNorm groups, attention at the lowest level, 2 res blocks.
    source = build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4, ch=32, ch_mult=[1, 2, 2],
                      num_res_blocks=2, z_channels=16, norm_groups=32).eval()
    path = _llamagen_file(tmp_path, source)
    state, _ = checkpoint.llamagen_state_dicts(checkpoint.read_torch_file(path), path)
    model = vq_from_llamagen_state(state)
    assert model.args.ch_mult == (1, 2, 2)
    assert (model.args.ch, model.args.num_res_blocks, model.args.z_channels) == (32, 2, 16)
    assert (model.codebook_size, model.args.codebook_dim) == (64, 4)
    for key, value in source.state_dict().items():
        if key != "quantize.codebook_used":
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.quantize.codebook_used, state["quantize.codebook_used"])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(model.encode_to_indices(x), source.encode_to_indices(x))


def test_llamagen_state_without_usage_history_still_loads():
    source = build_vq("VQ-Tiny", codebook_size=16, ch=32, norm_groups=32)
    state = {k: v for k, v in source.state_dict().items() if k != "quantize.codebook_used"}
    model = vq_from_llamagen_state(state)
    assert (model.quantize.codebook_used < 0).all()  # an empty history


def test_llamagen_inference_rejects_mismatches():
    source = build_vq("VQ-Tiny", codebook_size=16, ch=32, norm_groups=32)
    state = source.state_dict()
    with pytest.raises(CheckpointError, match="not a LlamaGen VQ"):
        vq_from_llamagen_state({"tok_embeddings.weight": torch.zeros(10, 4)})
    broken = dict(state)
    del broken["decoder.conv_out.weight"]
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        vq_from_llamagen_state(broken)
    wrong = dict(state)
    wrong["post_quant_conv.weight"] = torch.zeros(32, 5, 1, 1)
    with pytest.raises(CheckpointError, match="post_quant_conv.weight"):
        vq_from_llamagen_state(wrong)
    # Widths of 8 cannot be LlamaGen's 32-group normalisation.
    with pytest.raises(CheckpointError, match="norm_groups"):
        vq_from_llamagen_state(build_vq("VQ-Tiny", codebook_size=16).state_dict())


def test_encode_decode_shapes_and_ranges():
    model = build_vq("VQ-Tiny", codebook_size=32).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    indices = model.encode_to_indices(x)
    assert indices.shape == (3, 8, 8) and indices.dtype == torch.long
    assert 0 <= int(indices.min()) and int(indices.max()) < 32
    images = model.decode_indices(indices)
    assert images.shape == (3, 3, 16, 16)
    # The training forward pass picks the same codes and decodes to the same images.
    out = model(x)
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(out.recon, images)
    # Encoding is deterministic, and re-encoding the decoded image of those codes is too.
    again = model.encode_to_indices(images)
    assert torch.equal(model.encode_to_indices(images), again)
    torch.testing.assert_close(model.decode_indices(again), model.decode_indices(again.clone()))


def test_codes_are_unit_vectors_and_gradients_pass_through():
    model = build_vq("VQ-Tiny", codebook_size=32).train()
    assert torch.allclose(model.quantize.codebook().norm(dim=1), torch.ones(32))
    out = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    (out.recon.pow(2).mean() + out.codebook_loss + out.commit_loss).backward()
    # Straight-through: the encoder gets the reconstruction gradient; the codebook learns.
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    # Training records the assigned codes in LlamaGen's usage history.
    assert set(out.indices.flatten().tolist()) <= set(model.quantize.codebook_used.long().tolist())


def test_bad_inputs_are_refused():
    model = build_vq("VQ-Tiny", codebook_size=32)
    with pytest.raises(ValueError, match="multiple of the downsample factor"):
        model.encode_to_indices(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="shape"):
        model.encode_to_indices(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode_indices(torch.full((1, 4, 4), 32))
    with pytest.raises(ConfigError, match="unknown VQ config"):
        build_vq("VQ-99")
    with pytest.raises(ConfigError, match="norm_groups"):
        build_vq("VQ-Tiny", ch=10)


def test_mirai_checkpoint_round_trip(tmp_path):
    model = build_vq("VQ-Tiny", codebook_size=32).eval()
    checkpoint.save(tmp_path / "vq", model, meta={"note": "x"})
    loaded = checkpoint.load(tmp_path / "vq", VQModel)
    assert isinstance(loaded, VQModel) and loaded.name == "VQ-Tiny"
    assert loaded.args == model.args
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode_to_indices(x), model.encode_to_indices(x))


@pytest.fixture(scope="module")
def fashion_test_images():
    from mirai.builders.tokenizer.train import fashion_mnist_images, to_model_input

    try:
        images = fashion_mnist_images("test")[:64]
    except mirai.errors.DataError as err:
        pytest.skip(f"Fashion-MNIST is not available: {err}")
    return to_model_input(images)


@pytest.mark.parametrize("name, grid", [("vq8", 8), ("vq16", 16)])
def test_committed_fashion_tokenizers(name, grid, fashion_test_images):
    from mirai.builders.tokenizer.evaluate import reconstruction_report

    model = checkpoint.load(ASSETS / name, VQModel)
    x = fashion_test_images
    indices = model.encode_to_indices(x)
    assert indices.shape == (len(x), grid, grid)
    report = reconstruction_report(model, x, progress=False)
    assert report["psnr"] > 22  # far above the ~12 dB of an untrained model
    # Re-tokenizing a reconstruction is stable: mostly the same codes, and a second decode
    # close to the first (an untrained model gets ~10 % and ~16 dB here).
    first = model.decode_indices(indices).clamp(-1, 1)
    again = model.encode_to_indices(first)
    assert (again == indices).float().mean() > 0.6
    second = model.decode_indices(again).clamp(-1, 1)
    drift = ((second - first) / 2).pow(2).flatten(1).mean(1)
    assert (-10 * drift.log10()).mean() > 30
