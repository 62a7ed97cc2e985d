"""ADM's Inception-V3 features from torch-fidelity's port of the TensorFlow FID network.

ADM's evaluator runs TensorFlow's 2015-12-05 Inception graph. torch-fidelity ships a
PyTorch port of that graph (``FeatureExtractorInceptionV3``) that reproduces its bilinear
resize to 299×299 and its ``(x - 128) / 128`` input scaling, with weights converted from the
same graph. One forward pass here yields the three things ADM reads from that graph:

* ``pool`` ``(N, 2048)`` — ``pool_3:0``, torch-fidelity's ``'2048'`` (FID, precision, recall);
* ``logits`` ``(N, 1008)`` — pool_3 times the ``softmax/logits`` weight matrix *without the
  bias*, which is how ADM builds its softmax for the Inception Score; torch-fidelity calls
  this ``'logits_unbiased'``;
* ``spatial`` ``(N, 2023)`` — ``mixed_6/conv:0`` (sFID), the ReLU output of the first 1×1
  convolution of the ``mixed_6`` block, i.e. torch-fidelity's ``Mixed_6d.branch1x1``
  (17×17×192). torch-fidelity does not return it, so a forward hook takes it; ADM keeps
  channels 0..6 and flattens in TensorFlow's NHWC order (row, column, channel), which is
  reproduced here so that ADM's stored ``mu_s``/``sigma_s`` line up element for element.

Weights: with no path, torch-fidelity's release file is downloaded (once, into the torch
hub cache, the same place torch-fidelity keeps it); or pass a local ``.pth``/``.pt``/``.bin``
(read with ``weights_only=True``) or ``.safetensors`` file holding that state dict
(``mirai.checkpoint.read_weights``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mirai import checkpoint
from mirai.data.transforms import as_pixel_tensor
from mirai.errors import CheckpointError

SPATIAL_CHANNELS = 7


def load_inception_state(weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """State dict of torch-fidelity's FID Inception: downloaded when ``weights`` is None, else read locally."""
    if weights is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        try:
            return torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, map_location="cpu", weights_only=True)
        except Exception as err:  # network errors come in many types (URLError, HTTPError, socket errors)
            raise CheckpointError(
                f"could not download the FID Inception weights from {URL_INCEPTION_V3} ({err}); download that "
                "file where you have a connection and pass it with --inception-weights FILE"
            ) from None
    fix = ("--inception-weights takes torch-fidelity's FID Inception file (pt_inception-2015-12-05-*.pth, or its "
           "state dict as .safetensors); omit it to download that file")
    if Path(weights).is_dir():
        raise CheckpointError(f"Inception weights {weights} is a directory, not a weights file; {fix}")
    try:
        return checkpoint.read_weights(weights, "Inception weights")
    except CheckpointError as err:
        raise CheckpointError(f"{err} ({fix})") from None


class InceptionV3Features(nn.Module):
    """torch-fidelity's TF-exact Inception-V3 returning ADM's pool, logits and spatial features."""

    name = "inception"

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        state = load_inception_state(weights)  # first: a bad path fails before the slow import below
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity's constructor loads a path with torch.load(weights_only=False). Handing it
        # the state dict re-serialised in memory means the only pickle it ever reads is one made
        # here from plain tensors that were themselves read safely above.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer
            )
        except RuntimeError as err:  # load_state_dict: missing/unexpected keys or wrong shapes
            raise CheckpointError(
                f"the Inception weights do not fit torch-fidelity's FID Inception-V3: {str(err)[:500]}"
            ) from None
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # (N, 192, 17, 17) → first 7 channels, flattened as TensorFlow's (N, 17, 17, 7).
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(output), -1).float()

    @torch.no_grad()
    def extract(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """``pool`` (N, 2048), ``logits`` (N, 1008) and ``spatial`` (N, 2023) of uint8 ``(N, H, W, 3)`` images
        (tensor or NumPy array)."""
        images = as_pixel_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Inception features need uint8 (N, H, W, 3) images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        pool, logits = self.net(images.permute(0, 3, 1, 2).contiguous())
        spatial, self._spatial = self._spatial, None
        return {"pool": pool, "logits": logits, "spatial": spatial}
