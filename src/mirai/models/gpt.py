"""LlamaGen's class-conditional GPT, parameter for parameter.

Parameter names and shapes equal LlamaGen's ``autoregressive/models/gpt.py`` so that its
released state dicts load with ``strict=True``. Sequence layout: ``[class, x_1 .. x_{N-1}]``;
position p predicts token x_{p+1}. The forward pass can also hand back the residual stream
after any block (what the foresight loss aligns), and stop early when only that is wanted
(the EMA teacher of Mirai-E).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTArgs:
    """Architecture of a GPT; field names are LlamaGen's ``ModelArgs`` names."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    vocab_size: int = 16384
    cls_token_num: int = 1
    grid_size: int = 16

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.dim % self.n_head:
            raise ValueError(f"dim={self.dim} is not divisible by n_head={self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise ValueError(f"head dim {self.dim // self.n_head} must be a multiple of 4 for 2-D RoPE")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        for name in ("vocab_size", "num_classes", "grid_size", "n_layer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def seq_len(self) -> int:
        """Number of image tokens N = g * g."""
        return self.grid_size**2

    def to_dict(self) -> dict:
        return asdict(self)


def ffn_hidden_dim(args: GPTArgs) -> int:
    """SwiGLU width: 2/3 of 4d (times an optional multiplier), rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * args.dim) / 3)
    if args.ffn_dim_multiplier is not None:
        hidden = int(args.ffn_dim_multiplier * hidden)
    return args.multiple_of * math.ceil(hidden / args.multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_2d_table(grid_size: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> torch.Tensor:
    """LlamaGen's 2-D RoPE table, shape (cls_token_num + g*g, head_dim // 2, 2) of (cos, sin).

    Half of the rotary pairs encode the row, half the column; the class positions get an
    all-zero table (LlamaGen's construction, kept exactly for checkpoint compatibility).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, dtype=torch.float32), inv_freq)  # (g, head_dim/4)
    grid = torch.cat(
        [angles[:, None, :].expand(-1, grid_size, -1), angles[None, :, :].expand(grid_size, -1, -1)], dim=-1
    )  # (g, g, head_dim/2): rows first, then columns
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, D) ``x`` by a (T, D/2, 2) table."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * t[..., 0] - xs[..., 1] * t[..., 1], xs[..., 1] * t[..., 0] + xs[..., 0] * t[..., 1]], dim=-1
    )
    return out.flatten(3).type_as(x)


class KVCache(nn.Module):
    """Keys and values of past positions for one attention layer."""

    def __init__(self, batch: int, max_len: int, n_kv_head: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = args.n_head, args.n_kv_head, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_head + 2 * args.n_kv_head) * args.head_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.attn_dropout_p = args.attn_dropout_p
        self.resid_dropout = nn.Dropout(args.resid_dropout_p)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(B, T, self.n_kv_head, self.head_dim), rope).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        mask, causal = None, True
        if start_pos is not None:  # incremental decoding: attend to everything cached so far
            k, v = self.kv_cache.update(start_pos, k, v)
            causal = False
            if T > 1:
                q_pos = torch.arange(start_pos, start_pos + T, device=x.device)
                mask = q_pos[:, None] >= torch.arange(k.size(2), device=x.device)[None, :]
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        dropout = self.attn_dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, dropout_p=dropout)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, T, -1)))


class FeedForward(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        hidden = ffn_hidden_dim(args)
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.ffn_dropout = nn.Dropout(args.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row: the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class GPT(nn.Module):
    """Class-conditional LlamaGen transformer over a g x g grid of VQ tokens."""

    checkpoint_kind = "gpt"

    def __init__(self, args: GPTArgs, name: str = "GPT"):
        super().__init__()
        self.args, self.name = args, name
        self.cls_embedding = LabelEmbedder(args.num_classes, args.dim, args.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.tok_dropout = nn.Dropout(args.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        rope = rope_2d_table(args.grid_size, args.head_dim, args.rope_base, args.cls_token_num)
        self.register_buffer("freqs_cis", rope, persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        std = self.args.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        # A zero output layer makes the initial prediction uniform: loss starts at ln(V).
        nn.init.zeros_(self.output.weight)

    def checkpoint_config(self) -> tuple[str, dict]:
        return self.name, self.args.to_dict()

    @classmethod
    def from_checkpoint_config(cls, name: str, args: dict) -> GPT:
        return cls(GPTArgs(**args), name=name)

    def _apply(self, fn, recurse=True):
        # Keep the RoPE table in fp32 when the model is cast to bf16/fp16 (as LlamaGen does).
        super()._apply(fn, recurse)
        if self.freqs_cis.dtype != torch.float32:
            self.freqs_cis = self.freqs_cis.float()
        return self

    # ------------------------------------------------------------------ training / scoring
    def embed(self, tokens: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """``[class, tokens...]`` embeddings with token dropout; ``tokens`` may be None."""
        h = self.cls_embedding(labels)[:, : self.args.cls_token_num]
        if tokens is not None and tokens.size(1) > 0:
            h = torch.cat([h, self.tok_embeddings(tokens)], dim=1)
        return self.tok_dropout(h)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, T+1, V), float32, for tokens (B, T) and labels (B,): position p predicts token p."""
        return self.forward_with_hidden(tokens, labels, ())[0]

    def forward_with_hidden(
        self, tokens: torch.Tensor, labels: torch.Tensor, layers: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``(logits, {layer: hidden})``: the logits of ``forward`` and the outputs (B, T+1, dim) of
        the 1-based blocks in ``layers`` (residual stream, before the final norm)."""
        h, hidden = self._blocks(tokens, labels, set(layers), None)
        return self.output(self.norm(h)).float(), hidden

    def hidden_state(self, tokens: torch.Tensor, labels: torch.Tensor, layer: int) -> torch.Tensor:
        """The output (B, T+1, dim) of 1-based block ``layer``; the blocks after it are not run."""
        return self._blocks(tokens, labels, set(), layer)[0]

    def _blocks(
        self, tokens: torch.Tensor, labels: torch.Tensor, keep: set[int], stop_after: int | None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        if tokens.size(1) > self.args.seq_len - 1:
            raise ValueError(
                f"{tokens.size(1)} input tokens do not fit a {self.args.grid_size}x{self.args.grid_size} grid"
                f" (at most {self.args.seq_len - 1}); is grid_size set to the tokenizer's grid?"
            )
        # Skipped under torch.compile: a data-dependent branch would split the graph (and sync a GPU).
        if not torch.compiler.is_compiling() and tokens.numel() and (
            tokens.min() < 0 or tokens.max() >= self.args.vocab_size
        ):
            raise ValueError(
                f"token ids must lie in [0, {self.args.vocab_size}); got [{int(tokens.min())}, {int(tokens.max())}]."
                " Is the tokenizer's codebook the size the model was built for?"
            )
        h = self.embed(tokens, labels)
        rope = self.freqs_cis[: h.size(1)]
        hidden: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers, start=1):
            h = layer(h, rope)
            if index in keep:
                hidden[index] = h
            if index == stop_after:
                break
        return h, hidden

    # ------------------------------------------------------------------ decoding
    def setup_kv_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        max_len = max_len or self.args.seq_len + self.args.cls_token_num - 1
        dtype = dtype or self.output.weight.dtype
        device = self.output.weight.device
        for layer in self.layers:
            attn = layer.attention
            attn.kv_cache = KVCache(batch, max_len, attn.n_kv_head, attn.head_dim, dtype, device)

    def clear_kv_cache(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None

    def decode(self, h: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Run embeddings ``h`` (B, T, dim) at positions [start_pos, start_pos+T) through the
        cached transformer; returns logits for the last position (B, V)."""
        rope = self.freqs_cis[start_pos : start_pos + h.size(1)]
        for layer in self.layers:
            h = layer(h, rope, start_pos)
        return self.output(self.norm(h[:, -1])).float()
