"""LlamaGen's VQ image tokenizer, parameter for parameter.

Module and parameter names and shapes equal those of LlamaGen's
``tokenizer/tokenizer_image/vq_model.py`` (a taming-transformers style conv encoder and
decoder with a vector quantiser of l2-normalised codes in between), so that its released
``vq_ds16_c2i.pt`` loads with ``strict=True`` - the ``quantize.codebook_used`` buffer
included. Besides LlamaGen's ``VQ-16`` and ``VQ-8`` the registry holds small CPU-sized
configs for 32x32 Fashion-MNIST.

Images are (B, 3, H, W) tensors in [-1, 1]; a ``downsample_factor`` f turns them into a
(B, H/f, W/f) grid of code indices.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mirai.checkpoint import load_state_dict_checked
from mirai.config import from_dict
from mirai.errors import CheckpointError
from mirai.hub.pretrained import PretrainedMixin
from mirai.models.registry import named_args

# Length of LlamaGen's ``codebook_used`` buffer (a rolling history of assigned code ids).
USAGE_HISTORY = 65536


@dataclass
class VQArgs:
    """Architecture of a VQ tokenizer (LlamaGen's ``ModelArgs`` plus the encoder's fixed sizes)."""

    codebook_size: int = 16384
    codebook_dim: int = 8
    codebook_l2_norm: bool = True
    commit_loss_beta: float = 0.25
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    dropout: float = 0.0
    # LlamaGen always uses 32 groups; the small configs are narrower than that allows.
    norm_groups: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty list of positive integers, got {list(self.ch_mult)}")
        for name in ("codebook_size", "codebook_dim", "ch", "num_res_blocks", "z_channels", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        widths = {self.ch * m for m in self.ch_mult}
        bad = sorted(w for w in widths if w % self.norm_groups)
        if bad:
            raise ValueError(f"channel widths {bad} are not divisible by norm_groups={self.norm_groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ch_mult"] = list(self.ch_mult)
        return out


# ------------------------------------------------------------------------------ blocks
def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual (a 1x1 conv when widths differ), as in LlamaGen's VQ."""
    def __init__(self, in_ch: int, out_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # A 1x1 projection only where the width changes (LlamaGen's "nin_shortcut").
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c^-1/2, as LlamaGen
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after right/bottom zero padding: halves H and W."""
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right/bottom only), as LlamaGen and taming do.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: doubles H and W."""
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(res: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, key: str) -> nn.Module:
    """One resolution level holding ``res``/``attn`` lists and an optional down/upsample."""
    block = nn.Module()
    block.res = nn.ModuleList(res)
    block.attn = nn.ModuleList(attn)
    if resample is not None:
        setattr(block, key, resample)
    return block


def _run_level(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    # Attention follows every residual block, but only the lowest resolution has any.
    for i, res in enumerate(block.res):
        h = res(h)
        if len(block.attn):
            h = block.attn[i](h)
    return h


def _mid(channels: int, args: VQArgs) -> nn.ModuleList:
    g = args.norm_groups
    return nn.ModuleList(
        [ResnetBlock(channels, channels, args.dropout, g), AttnBlock(channels, g),
         ResnetBlock(channels, channels, args.dropout, g)]
    )


class Encoder(nn.Module):
    """Images (B, C, H, W) in [-1, 1] to latents (B, z_channels, H/f, W/f), f = 2**(len(ch_mult) - 1)."""
    def __init__(self, args: VQArgs):
        super().__init__()
        g, levels = args.norm_groups, len(args.ch_mult)
        self.conv_in = nn.Conv2d(args.in_channels, args.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        width = args.ch
        for i, mult in enumerate(args.ch_mult):
            last = i == levels - 1
            res, attn = [], []
            for _ in range(args.num_res_blocks):
                res.append(ResnetBlock(width, args.ch * mult, args.dropout, g))
                width = args.ch * mult
                if last:
                    attn.append(AttnBlock(width, g))
            self.conv_blocks.append(_level(res, attn, None if last else Downsample(width), "downsample"))
        self.mid = _mid(width, args)
        self.norm_out = _norm(width, g)
        self.conv_out = nn.Conv2d(width, args.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = _run_level(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) to images (B, C, h*f, w*f), the encoder's mirror."""
    def __init__(self, args: VQArgs):
        super().__init__()
        g, levels = args.norm_groups, len(args.ch_mult)
        width = args.ch * args.ch_mult[-1]
        self.conv_in = nn.Conv2d(args.z_channels, width, 3, padding=1)
        self.mid = _mid(width, args)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(levels)):  # lowest resolution first
            res, attn = [], []
            for _ in range(args.num_res_blocks + 1):
                res.append(ResnetBlock(width, args.ch * args.ch_mult[i], args.dropout, g))
                width = args.ch * args.ch_mult[i]
                if i == levels - 1:
                    attn.append(AttnBlock(width, g))
            self.conv_blocks.append(_level(res, attn, Upsample(width) if i else None, "upsample"))
        self.norm_out = _norm(width, g)
        self.conv_out = nn.Conv2d(width, args.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            h = _run_level(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantized(NamedTuple):
    """What the quantizer returns for a batch of latents."""
    z_q: torch.Tensor  # (B, D, h, w) code vectors; gradients pass straight through to the encoder
    indices: torch.Tensor  # (B, h, w) long
    codebook_loss: torch.Tensor  # moves codes towards encoder outputs
    commit_loss: torch.Tensor  # beta * pulls encoder outputs towards their codes


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser; with ``l2_norm`` both codes and inputs live on the unit sphere."""

    def __init__(self, codebook_size: int, codebook_dim: int, beta: float, l2_norm: bool):
        super().__init__()
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.beta, self.l2_norm = beta, l2_norm
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # LlamaGen's rolling history of the last assigned code ids (float, as in its files);
        # -1 marks an empty slot so that a fresh model reports no usage.
        self.register_buffer("codebook_used", torch.full((USAGE_HISTORY,), -1.0))

    def codebook(self) -> torch.Tensor:
        """The (normalised) code vectors, (codebook_size, codebook_dim)."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the codes nearest to rows of ``z`` (N, D), as ``flatten`` returns them."""
        codes = self.codebook()
        # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e; the |z|^2 term does not change the argmin.
        dist = codes.pow(2).sum(1)[None, :] - 2 * z @ codes.t()
        return dist.argmin(dim=1)

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent -> (B*h*w, D) vectors as the codebook sees them (normalised if l2)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.size(1))
        return F.normalize(flat, dim=-1) if self.l2_norm else flat

    def forward(self, z: torch.Tensor) -> Quantized:
        b, d, h, w = z.shape
        flat = self.flatten(z)
        indices = self.nearest(flat.detach())
        z_q = self.codebook()[indices]
        if self.training:
            self._record_usage(indices)
        codebook_loss = F.mse_loss(z_q, flat.detach())
        commit_loss = self.beta * F.mse_loss(flat, z_q.detach())
        z_q = flat + (z_q - flat).detach()  # straight-through estimator
        z_q = z_q.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        return Quantized(z_q, indices.view(b, h, w), codebook_loss, commit_loss)

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> None:
        n = min(indices.numel(), USAGE_HISTORY)
        self.codebook_used.copy_(torch.cat([self.codebook_used[n:], indices[-n:].to(self.codebook_used.dtype)]))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for (B, h, w) indices, as a (B, D, h, w) latent."""
        return self.codebook()[indices].permute(0, 3, 1, 2).contiguous()


class VQOutput(NamedTuple):
    """What ``VQModel.forward`` returns: the reconstruction, its codes and the two VQ losses."""
    recon: torch.Tensor  # (B, C, H, W) reconstruction
    indices: torch.Tensor  # (B, h, w)
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor


class VQModel(PretrainedMixin, nn.Module):
    """LlamaGen's VQ tokenizer: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder."""

    checkpoint_kind = "vq"

    def __init__(self, args: VQArgs, name: str = "VQ"):
        super().__init__()
        self.args, self.name = args, name
        self.encoder = Encoder(args)
        self.decoder = Decoder(args)
        self.quantize = VectorQuantizer(args.codebook_size, args.codebook_dim, args.commit_loss_beta,
                                        args.codebook_l2_norm)
        self.quant_conv = nn.Conv2d(args.z_channels, args.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(args.codebook_dim, args.z_channels, 1)

    def checkpoint_config(self) -> tuple[str, dict]:
        return self.name, self.args.to_dict()

    @classmethod
    def from_checkpoint_config(cls, name: str, args: dict) -> VQModel:
        return cls(from_dict(VQArgs, args, "args"), name=name)

    @property
    def downsample_factor(self) -> int:
        return self.args.downsample_factor

    @property
    def codebook_size(self) -> int:
        return self.args.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.downsample_factor
        if images.dim() != 4 or images.size(1) != self.args.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.args.in_channels}, H, W), got {tuple(images.shape)}"
            )
        if images.size(2) % f or images.size(3) % f:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the downsample factor {f}")

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latent (B, codebook_dim, H/f, W/f)."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        """Images from a (B, codebook_dim, h, w) latent of code vectors."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, images: torch.Tensor) -> VQOutput:
        """Reconstruct ``images``; also returns the codes and the two quantisation losses."""
        q = self.quantize(self.encode_latent(images))
        return VQOutput(self.decode_latent(q.z_q), q.indices, q.codebook_loss, q.commit_loss)

    @torch.no_grad()
    def encode_to_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Code ids (B, H/f, W/f), long, of images (B, 3, H, W) in [-1, 1]."""
        z = self.encode_latent(images)
        b, _, h, w = z.shape
        return self.quantize.nearest(self.quantize.flatten(z)).view(b, h, w)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, h*f, w*f) in about [-1, 1] from code ids (B, h, w)."""
        if indices.dim() != 3:
            raise ValueError(f"expected indices of shape (B, h, w), got {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"code ids must lie in [0, {self.codebook_size}); got [{int(indices.min())}, {int(indices.max())}]"
            )
        return self.decode_latent(self.quantize.lookup(indices.long()))


# ------------------------------------------------------------------------------ registry
# name -> architecture; LlamaGen's two tokenizers, then small CPU configs for 32x32 images.
VQ_CONFIGS: dict[str, dict] = {
    "VQ-16": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), z_channels=256),  # LlamaGen, 256 px -> 16x16
    "VQ-8": dict(ch=128, ch_mult=(1, 2, 2, 4), z_channels=256),  # LlamaGen, 256 px -> 32x32
    # Sized to train in about 10 minutes on one CPU thread (Fashion-MNIST, configs/tokenizer/).
    "VQ-S4": dict(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=32, norm_groups=4),  # 32 px -> 8x8
    "VQ-S2": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, norm_groups=4),  # 32 px -> 16x16
    "VQ-Tiny": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, norm_groups=4),  # tests
}


def vq_args(name: str, **kwargs) -> VQArgs:
    """``VQArgs`` of a named config with any field overridden."""
    return named_args(VQArgs, VQ_CONFIGS, name, "VQ", kwargs)


def build_vq(name: str, codebook_size: int = 16384, codebook_dim: int = 8, **overrides) -> VQModel:
    """Build a named tokenizer, e.g. ``build_vq("VQ-S4", codebook_size=512)``."""
    return VQModel(vq_args(name, codebook_size=codebook_size, codebook_dim=codebook_dim, **overrides), name=name)


# ------------------------------------------------------------------------------ LlamaGen files
def _count(state: dict, prefix: str) -> int:
    """Number of consecutive child indices ``prefix.<i>.`` present in ``state``."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return len(found)


def vq_from_llamagen_state(state: dict[str, torch.Tensor], norm_groups: int = 32) -> VQModel:
    """A ``VQModel`` holding a LlamaGen VQ state dict, its architecture inferred from the shapes.

    ``state`` is a flat state dict (``mirai.checkpoint.llamagen_state_dicts`` unwraps the
    ``{"model": ...}`` container). GroupNorm's group count leaves no trace in the weights;
    LlamaGen always uses 32. A file saved without the ``codebook_used`` history (LlamaGen's
    ``codebook_show_usage=False``) gets an empty one. Raises ``CheckpointError`` when the
    weights are not a LlamaGen VQ or do not fit the inferred architecture.
    """
    needed = ("quantize.embedding.weight", "encoder.conv_in.weight", "encoder.conv_out.weight",
              "encoder.conv_blocks.0.res.0.conv1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(
            f"not a LlamaGen VQ tokenizer state dict: no {missing} (first keys: {sorted(state)[:5]}); "
            "is this a GPT checkpoint rather than a tokenizer?"
        )
    codebook_size, codebook_dim = state["quantize.embedding.weight"].shape
    ch, in_channels = state["encoder.conv_in.weight"].shape[:2]
    ch_mult = []
    for i in range(_count(state, "encoder.conv_blocks")):
        width = state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0]
        if width % ch:
            raise CheckpointError(f"encoder level {i} has width {width}, not a multiple of the base width {ch}")
        ch_mult.append(width // ch)
    arch = dict(ch=int(ch), ch_mult=tuple(ch_mult), num_res_blocks=_count(state, "encoder.conv_blocks.0.res"),
                z_channels=int(state["encoder.conv_out.weight"].shape[0]))
    name = next((n for n, cfg in VQ_CONFIGS.items()
                 if all(getattr(VQArgs(**cfg), k) == v for k, v in arch.items())), "VQ-custom")
    try:
        args = VQArgs(codebook_size=int(codebook_size), codebook_dim=int(codebook_dim),
                      in_channels=int(in_channels), norm_groups=norm_groups, **arch)
    except ValueError as err:
        raise CheckpointError(f"cannot rebuild a VQ tokenizer from this state dict: {err}") from None
    model = VQModel(args, name=name)
    state = dict(state)
    state.setdefault("quantize.codebook_used", model.quantize.codebook_used.clone())
    load_state_dict_checked(model, state, strict=True)
    return model.eval()
