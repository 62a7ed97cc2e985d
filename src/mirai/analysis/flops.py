"""Per-image training FLOPs of the baseline, Mirai-I and Mirai-E (the paper's Table 15).

Convention (derived so as to reproduce Table 15, see ``tests/test_flops.py``):

* Only dense matrix products with a weight matrix are counted: every Linear of the GPT,
  the heads and the encoder, the output layer, and the token / class embedding lookups
  counted as the one-hot matmuls they are equivalent to (V*d multiply-adds per token).
  Element-wise work (norms, activations, RoPE, softmax) is ignored.
* The attention-score products QK^T and AV (2*T^2*d multiply-adds per layer, the full
  square) are *not* counted by default (``Convention.attention_scores``).
* 2 FLOPs per multiply-add. Training = 3x forward: the backward of y = xW is two products
  of the forward's size (dL/dx = dL/dy W^T and dL/dW = x^T dL/dy). Frozen passes (the EMA
  teacher, the image encoder) run forward only: 1x.
* A GPT step runs N = g*g positions (class + N-1 tokens); heads run on all N positions.

With this convention GPT-B (g=16, V=16384) gives 1.69e11 (paper 1.70e11), + Mirai-I head
1.80e11 (1.81e11), + Mirai-E (3 heads + teacher through block 8 incl. its embedding)
2.38e11 (2.35e11): all within 1.5%. Leaving out the embedding lookups gives 1.50e11 for
the baseline (-12%), and counting the attention scores 1.76e11 (+3.7%), so the paper's
baseline is about 6 * (all parameters) * (256 positions), i.e. this convention. The paper's
Mirai-E figure lies between counting the teacher's embedding lookup (2.38e11, done here
for consistency with the baseline) and not counting it (2.32e11); its overheads, +6.6%
and +38.2%, come out here as +6.7% and +41.0%.
The DINOv2-B/14 forward at 224 px (257 tokens) adds 4.39e10, 26% of the baseline, which
Table 15's +6.6% for Mirai-I leaves out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mirai.errors import ConfigError
from mirai.foresight.config import ForesightConfig
from mirai.foresight.heads import default_hidden
from mirai.foresight.pairs import head_pairs
from mirai.models.gpt import GPTArgs, ffn_hidden_dim

TRAIN_FACTOR = 3  # forward + backward, in units of the forward
FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class Convention:
    """What counts as a dense matmul; the defaults reproduce the paper's Table 15."""

    embedding: bool = True  # embedding lookups as one-hot matmuls
    attention_scores: bool = False  # QK^T and AV products


@dataclass(frozen=True)
class ViTShape:
    """A plain ViT encoder as far as matmuls go (DINOv2's SwiGLU giant has the same count)."""

    name: str
    width: int
    depth: int
    patch: int = 14
    mlp_ratio: float = 4.0
    extra_tokens: int = 1  # the CLS token, plus any register tokens


VIT_SIZES = {"s": (384, 12), "b": (768, 12), "l": (1024, 24), "g": (1536, 40)}  # width, depth
_SIZE_WORDS = {"small": "s", "base": "b", "large": "l", "giant": "g"}


def vit_shape(name: str) -> ViTShape | None:
    """The ViT named like ``dinov2_vitb14`` or timm's ``vit_base_patch14_dinov2``; None if not a ViT name.

    Register variants (``_reg``, and DINOv3, which always has 4) run 4 more tokens.
    """
    name = name.lower()
    match = re.search(r"vit_?([sblg])(\d+)", name) or re.search(r"vit_(small|base|large|giant)_patch(\d+)", name)
    if match is None:
        return None
    size = _SIZE_WORDS.get(match.group(1), match.group(1))
    width, depth = VIT_SIZES[size]
    patch = int(match.group(2))
    family = "DINOv3" if "dinov3" in name else "MAE" if "mae" in name else "DINOv2"
    registers = 4 if "reg" in name or family == "DINOv3" else 0
    return ViTShape(f"{family}-{size.upper()}/{patch}", width, depth, patch, extra_tokens=1 + registers)


def attention_score_macs(positions: int, width: int) -> int:
    """QK^T plus AV over all heads, counting the full T x T square as dense kernels do."""
    return 2 * positions * positions * width


def gpt_macs(args: GPTArgs, layers: int | None = None, conv: Convention = Convention()) -> int:
    """Multiply-adds of one forward pass over one image: all blocks and the output, or blocks 1..layers.
    The blocks run over every training position (PAR adds its n - 1 learnable tokens); the output
    layer over the N predicting ones."""
    n, positions = args.seq_len, args.max_len
    d = args.dim
    block = d * (args.n_head + 2 * args.n_kv_head) * args.head_dim + args.n_head * args.head_dim * d
    block += 3 * d * ffn_hidden_dim(args)
    depth = args.n_layer if layers is None else layers
    macs = positions * depth * block
    if conv.attention_scores:
        macs += depth * attention_score_macs(positions, args.n_head * args.head_dim)
    if conv.embedding:
        class_rows = args.num_classes + int(args.class_dropout_prob > 0)
        macs += (n - 1) * args.vocab_size * d + class_rows * d
    if layers is None:
        macs += n * d * args.vocab_size
    return macs


def head_macs(kind: str, in_dim: int, out_dim: int, positions: int, hidden: int | None = None,
              conv: Convention = Convention()) -> int:
    """Multiply-adds of one head over ``positions`` positions (see ``heads.py`` for the layers)."""
    if kind == "mlp":
        h = hidden or default_hidden(in_dim)
        return positions * (in_dim * h + h * h + h * out_dim)
    if kind == "transformer":
        macs = positions * (4 * in_dim * in_dim + 2 * in_dim * 4 * in_dim + in_dim * out_dim)
        return macs + (attention_score_macs(positions, in_dim) if conv.attention_scores else 0)
    raise ConfigError(f"unknown head type {kind!r}")


def vit_macs(shape: ViTShape, image_size: int, conv: Convention = Convention()) -> int:
    """Multiply-adds of one ViT forward on a square image (patch embedding + blocks)."""
    patches = (image_size // shape.patch) ** 2
    tokens = patches + shape.extra_tokens
    w = shape.width
    macs = patches * 3 * shape.patch**2 * w
    macs += tokens * shape.depth * (4 * w * w + 2 * int(shape.mlp_ratio * w) * w)
    if conv.attention_scores:
        macs += shape.depth * attention_score_macs(tokens, w)
    return macs


def training_flops(
    args: GPTArgs,
    cfg: ForesightConfig | None = None,
    encoder: ViTShape | None = None,
    encoder_resolution: int | None = None,
    conv: Convention = Convention(),
    target_dim: int | None = None,
    encoder_flops: float | None = None,
) -> dict[str, float]:
    """Per-image training FLOPs by part: ``gpt``, ``heads``, ``teacher``, ``encoder``, ``total``.

    ``encoder`` (Mirai-I) adds its frozen forward at ``encoder_resolution`` (default
    patch*g, the patch grid equal to the token grid); without it the encoder is left out,
    as in Table 15. ``encoder_flops`` instead gives a measured forward (``measure_encoder``, for
    encoders that are not ViTs). Mirai-I heads map to ``target_dim``: by default the encoder's
    width, or 768 (DINOv2-B, the paper's GPT-B setting) when no encoder is given.
    """
    n = args.max_len  # positions the heads see
    parts = {"gpt": TRAIN_FACTOR * FLOPS_PER_MAC * gpt_macs(args, conv=conv)}
    if cfg is not None and cfg.enabled:
        cfg.resolve_layer(args.n_layer)  # a block the model does not have is an error for every source
        k = cfg.num_heads()
        if cfg.output_diagnostic:
            head = head_macs(cfg.head, args.dim, args.dim, n, cfg.head_hidden, conv)
            pairs = head_pairs(args.grid_size, cfg.layout, "ema", cfg.k, cfg.offsets,
                               pair_with=cfg.pair_with, align_class_token=cfg.align_class_token)
            student = [len(s) for s, _ in pairs]  # the shared output layer runs on paired positions only
            unembed = sum(p * args.dim * args.vocab_size for p in student)
            parts["heads"] = TRAIN_FACTOR * FLOPS_PER_MAC * (k * head + unembed)
        elif cfg.source == "ema":
            parts["heads"] = TRAIN_FACTOR * FLOPS_PER_MAC * k * head_macs(
                cfg.head, args.dim, args.dim, n, cfg.head_hidden, conv)
            parts["teacher"] = FLOPS_PER_MAC * gpt_macs(args, cfg.resolve_layer(args.n_layer), conv)
        else:
            width = target_dim or (encoder.width if encoder is not None else 768)
            parts["heads"] = TRAIN_FACTOR * FLOPS_PER_MAC * k * head_macs(
                cfg.head, args.dim, width, n, cfg.head_hidden, conv)
            if encoder is not None:
                resolution = encoder.patch * args.grid_size if encoder_resolution is None else encoder_resolution
                if resolution < encoder.patch:
                    raise ConfigError(f"encoder resolution (--encoder-res) {resolution} px is smaller than one "
                                      f"{encoder.patch}-px patch of {encoder.name}; give at least {encoder.patch}, "
                                      f"e.g. {encoder.patch * args.grid_size}")
                parts["encoder"] = FLOPS_PER_MAC * vit_macs(encoder, resolution, conv)
            elif encoder_flops is not None:
                parts["encoder"] = encoder_flops
    parts = {name: float(v) for name, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def measure_encoder(spec: str | dict, grid_size: int) -> tuple[int, float] | None:
    """(feature width C, forward FLOPs of one image) of a foresight encoder held in a checkpoint directory
    (``fashion8``, or a folder from ``mirai encoder train-fashion``), whose convolutions no formula here
    covers: the encoder is built as training builds it and one forward over a 32x32 image (its input
    size) is counted by ``torch.utils.flop_counter.FlopCounterMode``. None for any other encoder (a timm
    name, whose weights may need a download)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mirai.foresight.config import encoder_name
    from mirai.foresight.encoders import FASHION_ASSETS, build_encoder
    from mirai.models.fashion_encoder import INPUT_SIZE

    name = encoder_name(spec)
    if name not in FASHION_ASSETS and not Path(name).expanduser().is_dir():
        return None
    encoder = build_encoder(spec, grid_size, device="cpu").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    return encoder.feature_dim, float(counter.get_total_flops())
