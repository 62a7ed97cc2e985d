"""Projection heads rho_k: GPT hidden states (B, T, d) -> foresight space (B, T, C).

``mlp`` is the paper's head, applied to each position on its own. ``transformer`` is the
Table 9 variant; its self-attention is bidirectional, so it can mix information across
positions, which is the paper's explanation of why it regularises the backbone less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_TYPES = ("mlp", "transformer")
PAPER_HIDDEN = 2048  # the paper's MLP width for every LlamaGen size


def default_hidden(in_dim: int) -> int:
    """MLP width when none is configured: 2048 as in the paper, but at most 4x the input.

    For LlamaGen widths (768 and up) this is the paper's 2048; for the small CPU models it
    keeps the head proportionate (GPT-Nano, d=64: 256) instead of a head many times the
    size of the model it regularises.
    """
    return min(PAPER_HIDDEN, 4 * in_dim)


class _SiLULinear(torch.autograd.Function):
    """``linear(silu(x))`` that keeps only ``x`` for backward and recomputes ``silu(x)`` there.

    Plain autograd keeps both ``x`` (for SiLU) and ``silu(x)`` (for Linear): two hidden-wide
    tensors per position. With three 2048-wide heads on GPT-B that is about 5% of the
    step's activation memory; recomputing the elementwise SiLU costs no matmul.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(F.silu(x), weight, bias)  # autocast (if on) casts as for nn.Linear

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        x = x.to(grad_out.dtype)  # under autocast grad_out has the low-precision compute dtype
        sig = torch.sigmoid(x)
        grad_x = (grad_out @ weight.to(grad_out.dtype)) * (sig * (1 + x * (1 - sig)))  # d silu/dx
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = flat_grad.t() @ (x * sig).reshape(-1, x.shape[-1])
        return grad_x, grad_weight.to(weight.dtype), flat_grad.sum(0).to(weight.dtype)


class MLPHead(nn.Module):
    """Linear(d -> hidden) . SiLU . Linear(hidden -> hidden) . SiLU . Linear(hidden -> C).

    Each SiLU is fused with the Linear after it (``_SiLULinear``) to halve the memory the
    head holds for backward; the parameters are those of the plain three-Linear stack.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or default_hidden(in_dim)
        self.fc1, self.fc2, self.fc3 = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = _SiLULinear.apply(x, self.fc2.weight, self.fc2.bias)
        return _SiLULinear.apply(x, self.fc3.weight, self.fc3.bias)


class TransformerHead(nn.Module):
    """LN . 4-head self-attention (+ residual) . LN . MLP ratio 4 (+ residual) . Linear(d -> C)."""

    def __init__(self, in_dim: int, out_dim: int, n_head: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = nn.MultiheadAttention(in_dim, n_head, batch_first=True)
        self.norm2 = nn.LayerNorm(in_dim)
        hidden = int(in_dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.proj(x)


def build_head(kind: str, in_dim: int, out_dim: int, hidden: int | None = None) -> nn.Module:
    """A head of type ``kind``; ``hidden`` is the MLP width (ignored by ``transformer``)."""
    if kind == "mlp":
        return MLPHead(in_dim, out_dim, hidden)
    if kind == "transformer":
        return TransformerHead(in_dim, out_dim)
    raise ValueError(f"unknown head type {kind!r}; choose one of {list(HEAD_TYPES)}")
