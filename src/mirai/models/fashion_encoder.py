"""A small foresight encoder network for 32×32 Fashion-MNIST images.

DINOv2 is far too large for 32×32 Fashion-MNIST images on a CPU, so the project trains a
stand-in with the properties Mirai-I needs from a foresight encoder:

* **bidirectional**: a convolutional trunk whose receptive field covers the whole 32×32
  image, followed by a global self-attention block, so every cell sees every other cell;
* **one feature per token cell**: the output map is ``grid × grid`` (8×8 for a 32×32 image,
  the project's stride-4 token grid; 16×16 with one downsampling fewer), finished by a
  LayerNorm as DINOv2's patch tokens are.

This module holds the network only. How the committed encoder was trained, and its linear
probe, live in ``mirai.builders.encoder`` and ``mirai.builders.encoder_probe``; the
foresight code wraps the network as a frozen target encoder (``mirai.foresight.encoders``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirai.config import from_dict
from mirai.errors import ConfigError

INPUT_SIZE = 32  # the project's padded Fashion-MNIST size
# Mean and std of the padded 32×32 training images in [0, 1]; centring the input speeds up training.
PIXEL_MEAN, PIXEL_STD = 0.2190, 0.3318


@dataclass
class FashionEncoderArgs:
    """Architecture of ``FashionEncoderNet`` (stored in the checkpoint's ``config.json``)."""

    grid: int = 8  # output cells per side for a 32×32 input: 8 (stride 4) or 16 (stride 2)
    width: int = 64  # channels of the stride-2 stage; the grid stage has ``dim``
    dim: int = 128  # feature dimension C
    res_blocks: int = 2  # residual 3×3 blocks at grid resolution
    heads: int = 4  # attention heads of the global block

    def __post_init__(self) -> None:
        if self.grid not in (8, 16):
            raise ConfigError(f"FashionEncoder grid must be 8 or 16 for 32×32 images, got {self.grid}")
        if self.dim % self.heads:
            raise ConfigError(f"FashionEncoder dim {self.dim} must be divisible by heads {self.heads}")


def _conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(dim, dim), _conv_bn(dim, dim, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class _GlobalBlock(nn.Module):
    """Pre-norm transformer block over all grid cells: every cell attends to the whole image."""

    def __init__(self, dim: int, heads: int, cells: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, cells, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens + self.pos
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class FashionEncoderNet(nn.Module):
    """32×32 image in [0, 1] → LayerNormed feature map ``(B, dim, grid, grid)``.

    Colour input is averaged to grey: Fashion-MNIST images are grey replicated to three
    channels, so the average is exact for them and the first layer stays one channel wide.
    """

    checkpoint_kind = "fashion_encoder"

    def __init__(self, args: FashionEncoderArgs):
        super().__init__()
        self.args = args
        stages: list[nn.Module] = [_conv_bn(1, args.width // 2, stride=2), _conv_bn(args.width // 2, args.width)]
        # 32 → 16 above; one more stride-2 stage for the 8×8 grid.
        stages.append(_conv_bn(args.width, args.dim, stride=2 if args.grid == 8 else 1))
        stages += [_ResBlock(args.dim) for _ in range(args.res_blocks)]
        self.trunk = nn.Sequential(*stages)
        self.mix = _GlobalBlock(args.dim, args.heads, args.grid * args.grid)
        self.norm = nn.LayerNorm(args.dim)

    def checkpoint_config(self) -> tuple[str, dict]:
        """(name, args) that ``mirai.checkpoint`` stores in ``config.json`` to rebuild the network."""
        return f"fashion-encoder-{self.args.grid}", asdict(self.args)

    @classmethod
    def from_checkpoint_config(cls, name: str, args: dict) -> FashionEncoderNet:
        """An untrained network of the architecture ``checkpoint_config`` stored (the name is informative only)."""
        return cls(from_dict(FashionEncoderArgs, args, "args"))

    def forward(self, images01: Tensor) -> Tensor:
        if images01.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"FashionEncoderNet expects 32×32 images, got {tuple(images01.shape[-2:])}")
        x = (images01.mean(1, keepdim=True) - PIXEL_MEAN) / PIXEL_STD
        fmap = self.trunk(x)
        b, c, h, w = fmap.shape
        tokens = self.norm(self.mix(fmap.flatten(2).transpose(1, 2)))
        return tokens.transpose(1, 2).reshape(b, c, h, w)
