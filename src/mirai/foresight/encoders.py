"""Frozen image encoders that give Mirai-I its foresight targets: one feature per token cell.

Every encoder maps images in [0, 1], ``(B, 3, H, W)``, to ``(B, g*g, C)`` features in raster
order, where ``g`` is the GPT's token grid; it is frozen (eval mode, no gradients) and runs
under ``torch.no_grad`` (bf16 autocast on CUDA).

``build_encoder(spec, grid_size)`` understands

* a DINOv2/DINOv3/MAE short name (``"dinov2_vitb14"``, see ``ALIASES``) or any timm ViT name
  (``"vit_base_patch14_dinov2.lvd142m"``): the released weights, fetched by timm from the
  Hugging Face hub (timm's own cache and offline switches apply);
* a dict ``{"name": ..., "weights": "file.safetensors" | "file.pth", "layer": 8}``: the
  same architectures with a local weights file (timm layout, or Meta's DINOv2 layout —
  timm's converter handles both); ``layer`` takes the output of that block instead of the
  final-norm tokens (Table 4 uses MAE layer 8 / 16), normalised by the final norm when
  ``"norm_layer": true``; ``"pretrained": false`` gives a randomly initialised encoder
  (tests, ablations); ``"model_args"`` are extra ``timm.create_model`` arguments (e.g. a
  smaller ``depth``/``embed_dim``);
* a Mirai checkpoint directory holding a ``fashion_encoder`` network, or a committed
  Fashion-MNIST encoder: ``"fashion8_ssl"`` (self-supervised only, never saw a label) or
  ``"fashion8"`` = ``"fashion8_supervised"`` (its global term is trained on the labels); 8×8 native
  grid, other grids by average-pooling or bilinear upsampling of the feature map.

Position embeddings are fitted to the grid once, when the model is built: timm creates the
ViT at ``patch*g`` pixels and resamples (bicubic) any pos-embed saved at another size, such
as DINOv2's 37×37 (518 px) table.
"""

from __future__ import annotations

import abc
import difflib
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirai import checkpoint
from mirai.errors import CheckpointError, ConfigError
from mirai.hub.resolve import resolve
from mirai.models.fashion_encoder import INPUT_SIZE, FashionEncoderNet

# Short names of the encoders the paper uses or compares (Table 4), mapped to timm names.
ALIASES: dict[str, str] = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
    "dinov3_vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3_vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3_vitl16": "vit_large_patch16_dinov3.lvd1689m",
    "mae_vitb16": "vit_base_patch16_224.mae",
    "mae_vitl16": "vit_large_patch16_224.mae",
}

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "fashion"
# One committed network per objective serves every grid: GridNetEncoder pools or upsamples its 8×8 map.
# ``fashion8_ssl`` never saw a label (the DINOv2 analogue); ``fashion8`` (also ``fashion8_supervised``)
# has a supervised global term. ``fashion8`` keeps its meaning so that stored configs reproduce.
FASHION_ASSETS = {"fashion8": ASSETS / "encoder8", "fashion8_supervised": ASSETS / "encoder8",
                  "fashion8_ssl": ASSETS / "encoder8_ssl"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FrozenEncoder(nn.Module, abc.ABC):
    """Base of all foresight encoders: frozen, always in eval mode, never tracks gradients.

    Subclasses implement ``encode`` on a validated batch; ``forward`` adds the no-grad
    context, the CUDA autocast and the output checks.
    """

    grid_size: int
    feature_dim: int
    input_size: int  # side of the square images the network itself sees

    def __init__(self, grid_size: int, feature_dim: int):
        super().__init__()
        self.grid_size, self.feature_dim = int(grid_size), int(feature_dim)

    def freeze(self) -> FrozenEncoder:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        # A parent's .train() must not switch dropout or BatchNorm statistics back on: the
        # targets would drift during training.
        return super().train(False)

    @abc.abstractmethod
    def encode(self, images01: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, grid_size**2, feature_dim)."""

    # no_grad rather than inference_mode: the result is a target in a loss whose other side
    # needs gradients, and inference tensors may not be saved for backward.
    @torch.no_grad()
    def forward(self, images01: Tensor, unit_range_known: bool = False) -> Tensor:
        """Features (B, grid_size**2, feature_dim), float32, of float images (B, 3, H, W) in [0, 1].
        ``unit_range_known``: the caller made the images from uint8 pixels (``to_unit_range``), so
        the range test, which reads a device value (a GPU sync), is skipped."""
        if images01.ndim != 4 or images01.shape[1] not in (1, 3) or not images01.is_floating_point():
            raise ValueError(f"expected float images (B, 3, H, W) in [0, 1], got {images01.dtype} "
                             f"{tuple(images01.shape)}")
        # The tokenizer's [-1, 1] images are the likely mix-up; they would silently give wrong targets.
        if not unit_range_known and images01.numel() and images01.min().item() < -1e-3:
            raise ValueError("encoder input has negative values: foresight encoders take images in [0, 1], "
                             "not the tokenizer's [-1, 1] (use mirai.data.transforms.to_unit_range)")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images01.is_cuda):
            features = self.encode(images01)
        expected = (images01.shape[0], self.grid_size ** 2, self.feature_dim)
        if tuple(features.shape) != expected:
            raise RuntimeError(f"{type(self).__name__} produced {tuple(features.shape)}, expected {expected}")
        return features.float()


class TimmEncoder(FrozenEncoder):
    """A timm ViT (DINOv2, DINOv3, MAE, ...) built at ``patch * grid_size`` pixels.

    Input images are bicubic-resized to that size and normalised with the model's own mean
    and std (ImageNet's for DINOv2); the output is the final-norm patch tokens without the
    class and register tokens, or the tokens after block ``layer`` (1-based) when given.
    """

    def __init__(self, name: str, grid_size: int, weights: str | Path | None = None,
                 pretrained: bool | None = None, layer: int | None = None, norm_layer: bool = False,
                 model_args: dict | None = None):
        import timm
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        timm_name = ALIASES.get(name, name)
        model_args = dict(model_args or {})
        if pretrained is None:
            pretrained = weights is None
        if pretrained and weights is not None:
            raise ConfigError(f"encoder {name!r}: give either pretrained=true (hub weights) or a weights file, "
                              "not both")
        if not timm.is_model(timm_name):
            known = [*FASHION_ASSETS, *{f"fashion/{p.name}" for p in FASHION_ASSETS.values()}, *ALIASES]
            close = difflib.get_close_matches(name.lower().replace("-", "_"), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown encoder {name!r}: not a timm model, a checkpoint folder or a committed "
                              f"encoder; {hint}the committed ones are {sorted(FASHION_ASSETS)}, the short names "
                              f"{sorted(ALIASES)} (or any timm ViT name)")
        with torch.device("meta"):  # learn the architecture without allocating the weights
            skeleton = timm.create_model(timm_name, pretrained=False, **model_args)
        if not isinstance(skeleton, (VisionTransformer, Eva)):
            raise ConfigError(f"encoder {name!r} is a {type(skeleton).__name__}; only timm ViTs "
                              "(VisionTransformer, Eva) give patch tokens on a grid")
        input_size = skeleton.patch_embed.patch_size[0] * grid_size
        try:
            model = timm.create_model(timm_name, pretrained=pretrained, img_size=input_size,
                                      num_classes=0, **model_args)
        except (OSError, RuntimeError, ValueError) as err:
            if not pretrained:
                raise
            raise CheckpointError(
                f"could not fetch the pretrained weights of {timm_name} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); when offline, download them once where "
                f"you are online, or pass {{'name': {name!r}, 'weights': '/path/to/file.safetensors'}} (on "
                "Fashion-MNIST, the committed label-free encoder needs no download: foresight.encoder=fashion8_ssl)"
            ) from None
        if weights is not None:
            _load_timm_weights(model, Path(weights))
        if layer is not None and not 1 <= layer <= len(model.blocks):
            raise ConfigError(f"encoder {name!r}: layer must be in 1..{len(model.blocks)}, got {layer}")
        super().__init__(grid_size, model.num_features)
        self.name, self.layer, self.norm_layer, self.input_size = timm_name, layer, norm_layer, input_size
        self.model = model
        cfg = model.pretrained_cfg or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", IMAGENET_STD)).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def encode(self, images01: Tensor) -> Tensor:
        x = images01.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            # Antialiasing matters when shrinking (e.g. 256 → 224); bicubic may overshoot, hence the clamp.
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std
        if self.layer is None:
            return self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        return self.model.forward_intermediates(x, indices=[self.layer - 1], norm=self.norm_layer,
                                                output_fmt="NLC", intermediates_only=True)[0]


def _load_timm_weights(model: nn.Module, path: Path) -> None:
    """Load a local file into a timm ViT, resampling its pos-embed to the model's grid."""
    from timm.models import eva, vision_transformer

    state = checkpoint.read_weights(path, "encoder weights")
    # timm's own converters: Meta's DINOv2 key layout, patch-embed and pos-embed resampling.
    filter_fn = eva.checkpoint_filter_fn if isinstance(model, eva.Eva) else vision_transformer.checkpoint_filter_fn
    state = filter_fn(state, model)
    # The encoder is built without a classifier; a checkpoint's head is not part of the patch features.
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(("head.", "fc_norm."))}
    try:
        checkpoint.load_state_dict_checked(model, state)
    except CheckpointError as err:
        arch = model.pretrained_cfg.get("architecture")
        raise CheckpointError(f"{path} does not fit encoder {arch}: {err}") from None


class GridNetEncoder(FrozenEncoder):
    """A Mirai-trained convolutional encoder (``FashionEncoderNet``) read from a checkpoint dir.

    Input images are resized (bilinear, antialiased) to the 32×32 the network was trained
    on. When ``grid_size`` differs from the network's own grid, its feature map is
    average-pooled (coarser grid) or bilinearly upsampled (finer grid) to ``grid_size``.
    """

    def __init__(self, net: FashionEncoderNet, grid_size: int, source: str = ""):
        native = net.args.grid
        if grid_size % native and native % grid_size:
            served = sorted({native // k for k in range(1, native + 1) if native % k == 0} | {native * 2, native * 4})
            raise ConfigError(f"encoder {source or 'network'} has a {native}×{native} grid, which cannot be pooled "
                              f"or upsampled to {grid_size}×{grid_size} by an integer factor: it serves token grids "
                              f"{', '.join(map(str, served))}, ...; choose another foresight.encoder (a timm ViT "
                              "serves any grid) or a tokenizer whose grid is one of these")
        super().__init__(grid_size, net.args.dim)
        self.net, self.source, self.input_size = net, source, INPUT_SIZE
        self.freeze()

    def encode(self, images01: Tensor) -> Tensor:
        x = images01
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        fmap = self.net(x)
        if fmap.shape[-1] > self.grid_size:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid_size)
        elif fmap.shape[-1] < self.grid_size:
            fmap = F.interpolate(fmap, size=(self.grid_size, self.grid_size), mode="bilinear", align_corners=False)
        return fmap.flatten(2).transpose(1, 2)


def load_grid_encoder(path: str | Path, grid_size: int) -> GridNetEncoder:
    """A ``GridNetEncoder`` from a Mirai checkpoint directory of kind ``fashion_encoder``."""
    net = checkpoint.load(path, FashionEncoderNet)
    return GridNetEncoder(net, grid_size, source=str(path))


_SPEC_KEYS = {"name", "weights", "pretrained", "layer", "norm_layer", "model_args"}


def build_encoder(spec: str | dict, grid_size: int, device: torch.device | str | None = None) -> FrozenEncoder:
    """Build a frozen foresight encoder whose patch grid is ``grid_size × grid_size``.

    ``spec`` is a name, a checkpoint directory or a dict (see the module docstring).
    """
    if grid_size < 1:
        raise ConfigError(f"grid_size must be positive, got {grid_size}")
    if isinstance(spec, (str, Path)):
        spec = {"name": str(spec)}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"encoder spec must be a name or a dict with a 'name', got {spec!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"encoder spec has unknown key(s) {unknown}; valid keys are {sorted(_SPEC_KEYS)}")
    name = str(spec["name"])
    local = FASHION_ASSETS.get(name) or resolve(Path(name).expanduser(), "encoder")  # asset names, hf://
    if name in FASHION_ASSETS or local.is_dir():
        extra = sorted(set(spec) - {"name"})
        if extra:
            raise ConfigError(f"encoder {name!r} is a checkpoint directory; {extra} do not apply to it")
        if not local.is_dir():
            raise CheckpointError(f"the committed encoder {name!r} is missing at {local}; reinstall mirai or "
                                  "train one with `mirai encoder train-fashion`")
        encoder: FrozenEncoder = load_grid_encoder(local, grid_size)
    elif local.is_file():
        raise ConfigError(f"{name} is a weights file: say which architecture it holds, e.g. "
                          f"{{'name': 'dinov2_vitb14', 'weights': {name!r}}}")
    else:
        layer = spec.get("layer")
        encoder = TimmEncoder(name, grid_size, weights=spec.get("weights"), pretrained=spec.get("pretrained"),
                              layer=None if layer is None else int(layer),
                              norm_layer=bool(spec.get("norm_layer", False)), model_args=spec.get("model_args"))
    return encoder.to(device) if device is not None else encoder


def cache_features(encoder: FrozenEncoder, image_iter: Iterable[Tensor], n: int,
                   device: torch.device | str | None = None, desc: str = "encoder features") -> Tensor:
    """Run ``encoder`` over batches of [0, 1] images once and keep the features.

    ``image_iter`` yields ``(b, 3, H, W)`` batches (``n`` images in all). Returns
    ``(n, g*g, C)`` float16 on the CPU: half the memory of float32, and cosine targets do
    not need more precision.
    """
    from tqdm import tqdm

    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    out = torch.empty(n, encoder.grid_size ** 2, encoder.feature_dim, dtype=torch.float16)
    filled = 0
    with tqdm(total=n, desc=desc, unit="img", disable=None) as bar:
        for batch in image_iter:
            b = len(batch)
            if filled + b > n:
                raise ValueError(f"cache_features was told {n} images but the iterator yields more")
            out[filled:filled + b] = encoder(batch.to(device, non_blocking=True)).to("cpu", torch.float16)
            filled += b
            bar.update(b)
    if filled != n:
        raise ValueError(f"cache_features was told {n} images but the iterator yielded {filled}")
    return out
