"""LlamaGen's class-conditional GPT, parameter for parameter.

Parameter names and shapes equal LlamaGen's ``autoregressive/models/gpt.py`` so that its
released state dicts load with ``strict=True``. Sequence layout: ``[class, x_1 .. x_{N-1}]``;
position p predicts token x_{p+1}. The forward pass can also hand back the residual stream
after any block (what the foresight loss aligns), and stop early when only that is wanted
(the EMA teacher of Mirai-E).

``order: par`` with ``regions_per_side`` M > 1 is PAR (Wang et al., CVPR 2025; ``mirai.models.par``):
tokens in PAR's region order (``to_sequence``), n - 1 = M^2 - 1 learnable tokens after the n-th
token, a group-wise mask and a permuted RoPE table; parameter names equal the released PAR code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mirai.config import from_dict
from mirai.hub.pretrained import PretrainedMixin
from mirai.models.decoding import DecodePlan, KVCache, decode_plan
from mirai.models.par import (
    DecodePass, cell_positions, decode_schedule, from_par, group_mask, par_rope_table, sequence_cells, to_par,
)
from mirai.models.rope import RopeFactors, apply_rope, rope_2d_table, rope_factors


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
    class_dropout_prob: float = 0.1  # 0: the null class (guidance) was never trained
    null_class: bool | None = None  # the class table has the null row; None: class_dropout_prob > 0 (LlamaGen)
    vocab_size: int = 16384
    cls_token_num: int = 1
    grid_size: int = 16
    order: str = "raster"  # "raster" (LlamaGen) or "par": PAR's region order (mirai.models.par)
    regions_per_side: int = 1  # PAR's M: n = M^2 regions, one token each per parallel pass

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        # Sizes first: the checks below divide by them (a stored config may have been edited by hand).
        for name in ("dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "vocab_size", "num_classes", "grid_size",
                     "cls_token_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("norm_eps", "rope_base"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.null_class is None:
            self.null_class = self.class_dropout_prob > 0
        if self.class_dropout_prob > 0 and not self.null_class:
            raise ValueError("class_dropout_prob > 0 needs the null-class row (null_class=True)")
        if self.order not in ("raster", "par"):
            raise ValueError(f"order must be 'raster' or 'par', got {self.order!r}")
        if self.order == "raster" and self.regions_per_side != 1:
            raise ValueError("regions_per_side is PAR's setting: set order='par' with it")
        if self.regions_per_side < 1 or self.grid_size % self.regions_per_side:
            raise ValueError(f"regions_per_side={self.regions_per_side} must divide grid_size={self.grid_size}")
        if self.dim % self.n_head:
            raise ValueError(f"dim={self.dim} is not divisible by n_head={self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise ValueError(f"head dim {self.dim // self.n_head} must be a multiple of 4 for 2-D RoPE")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def seq_len(self) -> int:
        """Number of image tokens N = g * g."""
        return self.grid_size**2

    @property
    def parallel_tokens(self) -> int:
        """n: tokens decoded per parallel pass (PAR's M^2; 1 for raster order)."""
        return self.regions_per_side**2 if self.order == "par" else 1

    def decode_schedule(self) -> list[DecodePass]:
        """The forward passes that generate one image in this order (``mirai.models.par``)."""
        return decode_schedule(self.grid_size, self.regions_per_side)

    @property
    def max_len(self) -> int:
        """Positions of the longest sequence: class tokens, N - 1 inputs, n - 1 learnable tokens (PAR)."""
        return self.cls_token_num + self.seq_len - 1 + self.parallel_tokens - 1

    def to_dict(self) -> dict:
        return asdict(self)


def check_token_ids(tokens: np.ndarray | torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` unless every id in ``tokens`` (any shape; a NumPy array or a host
    tensor) lies in ``[0, vocab_size)``.

    Callers run it where batches are made, on the host, once per batch: inside ``forward`` the
    same test would read a device value on every call (a GPU sync per step) and split a compiled
    graph, and an out-of-range id on a GPU is an opaque device-side assert instead of this message.
    """
    if not len(tokens.reshape(-1)):
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}); got [{low}, {high}]. Is the tokenizer's "
                         "codebook the size the model was built for?")


def ffn_hidden_dim(args: GPTArgs) -> int:
    """SwiGLU width: 2/3 of 4d (times an optional multiplier), rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * args.dim) / 3)
    if args.ffn_dim_multiplier is not None:
        hidden = int(args.ffn_dim_multiplier * hidden)
    return args.multiple_of * math.ceil(hidden / args.multiple_of)


class RMSNorm(nn.Module):
    """RMS normalisation computed in fp32, then a learnt per-channel scale (LlamaGen's ``RMSNorm``)."""
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """Multi-head attention with fused qkv, 2-D RoPE, optional grouped kv heads and a KV cache (LlamaGen)."""
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = args.n_head, args.n_kv_head, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_head + 2 * args.n_kv_head) * args.head_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.attn_dropout_p = args.attn_dropout_p
        self.resid_dropout = nn.Dropout(args.resid_dropout_p)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: RopeFactors, slots: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (T, keys), True = may attend, replaces the causal rule (PAR's group mask).
        Decoding: ``slots`` (T,) are the cache slots of the T inputs, and ``mask`` covers the whole cache."""
        B, T, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        qk, v = self.wqkv(x).split([q_size + kv_size, kv_size], dim=-1)
        # q and k lie side by side in wqkv's output: one rotation for both heads' sets.
        qk = apply_rope(qk.view(B, T, self.n_head + self.n_kv_head, self.head_dim), rope)
        q, k = qk.transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if slots is not None:
            k, v = self.kv_cache.update(slots, k, v)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        dropout = self.attn_dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, T, -1)))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x), hidden width from ``ffn_hidden_dim`` (LlamaGen)."""
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
    """Pre-norm block: x + attention(norm(x)), then + feed_forward(norm(x)) (LlamaGen)."""
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, rope: RopeFactors, slots: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, slots, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class SpecialTokens(nn.Module):
    """PAR's n - 1 learnable tokens, inserted between the sequential and the parallel stage
    (``spe_tok_embeddings.special_embeddings.weight``, as in the released PAR code)."""

    def __init__(self, count: int, dim: int):
        super().__init__()
        self.special_embeddings = nn.Embedding(count, dim)

    def forward(self, batch: int) -> torch.Tensor:
        """The tokens for a batch: (batch, n - 1, dim)."""
        return self.special_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (``null_class``): the null class used for classifier-free
    guidance, trained by replacing labels with it at rate ``dropout_prob``."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float, null_class: bool = True):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(null_class), dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class GPT(PretrainedMixin, nn.Module):
    """Class-conditional LlamaGen transformer over a g x g grid of VQ tokens."""

    checkpoint_kind = "gpt"

    def __init__(self, args: GPTArgs, name: str = "GPT"):
        super().__init__()
        self.args, self.name = args, name
        self.cls_embedding = LabelEmbedder(args.num_classes, args.dim, args.class_dropout_prob, args.null_class)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.tok_dropout = nn.Dropout(args.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        rope = rope_2d_table(args.grid_size, args.head_dim, args.rope_base, args.cls_token_num)
        # PAR with n > 1 regions: n - 1 learnable tokens (the released code's parameter name), the
        # RoPE table permuted to PAR order and the group-wise mask. PAR with M = 1 is LlamaGen.
        self.parallel = args.parallel_tokens > 1
        if self.parallel:
            if args.cls_token_num != 1:
                raise ValueError("PAR order is defined for one class token (cls_token_num=1)")
            self.spe_tok_embeddings = SpecialTokens(args.parallel_tokens - 1, args.dim)
            rope = par_rope_table(rope, args.grid_size, args.regions_per_side, args.cls_token_num)
            # One position longer than training uses: the whole grid can be fed (``cell_states``).
            self.register_buffer("attn_mask", group_mask(len(rope), args.parallel_tokens), persistent=False)
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
        return cls(from_dict(GPTArgs, args, "args"), name=name)  # a stored key or value is checked, not trusted

    def _apply(self, fn, recurse=True):
        # A bf16/fp16 cast of the model leaves the RoPE table in fp32 with its fp32 values (LlamaGen keeps it as a
        # plain attribute that casts never touch): only its device follows ``fn``; a cast and back would round it.
        table = self.freqs_cis
        super()._apply(fn, recurse)
        if self.freqs_cis.dtype != torch.float32:
            self.freqs_cis = table.to(self.freqs_cis.device)
        return self

    # ------------------------------------------------------------------ training / scoring
    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raster-order tokens (B, N) in the order this model generates them (PAR's, or raster)."""
        return to_par(tokens, self.args.regions_per_side) if self.parallel else tokens

    def from_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_sequence``: generated tokens (B, N) back in raster order."""
        return from_par(tokens, self.args.regions_per_side) if self.parallel else tokens

    def sequence_cells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per training-sequence position: the raster cell just read and the cell predicted (-1:
        none); what the foresight pairs are built from (``mirai.models.par.sequence_cells``)."""
        return sequence_cells(self.args.grid_size, self.args.regions_per_side if self.parallel else 1)

    def cell_states(self, tokens: torch.Tensor, labels: torch.Tensor, layer: int) -> torch.Tensor:
        """The block-``layer`` state (B, N, dim) of every grid cell of raster ``tokens`` (B, N), in
        raster order: the training-time state at the position that has just read the cell's token.
        The last cell is only predicted in training; its state comes from feeding the whole grid."""
        sequence = self.to_sequence(tokens)
        h = self._blocks(sequence, labels, set(), layer, whole_grid=True)[0]
        regions = self.args.regions_per_side if self.parallel else 1
        states = h[:, cell_positions(self.args.grid_size, regions).to(h.device) + self.args.cls_token_num - 1]
        if self.parallel:  # the last group also attends to the last token: keep the training states
            train = self.hidden_state(sequence[:, :-1], labels, layer)
            read = self.sequence_cells()[0].to(h.device)
            states[:, read[read >= 0]] = train[:, read >= 0]
        return states

    def embed(self, tokens: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """``[class, tokens...]`` embeddings with token dropout; ``tokens`` (model order) may be None.
        PAR inserts its n - 1 learnable tokens after the n-th token."""
        h = self.cls_embedding(labels)[:, : self.args.cls_token_num]
        if tokens is not None and tokens.size(1) > 0:
            e = self.tok_embeddings(tokens)
            n = self.args.parallel_tokens
            if self.parallel and tokens.size(1) >= n:
                e = torch.cat([e[:, :n], self.spe_tok_embeddings(len(e)).to(e.dtype), e[:, n:]], dim=1)
            h = torch.cat([h, e], dim=1)
        return self.tok_dropout(h)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, T+1, V), float32, for tokens (B, T) in model order (``to_sequence``) and
        labels (B,): position p predicts token p. PAR's outputs at its extra positions are dropped."""
        return self.forward_with_hidden(tokens, labels, ())[0]

    def logits_at(self, tokens: torch.Tensor, labels: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        """Logits (B, len(positions), V) at sequence ``positions`` of a full forward pass, including
        PAR's positions past the last input token (decoding without a KV cache)."""
        h, _ = self._blocks(tokens, labels, set(), None)
        return self.output(self.norm(h[:, list(positions)])).float()

    def forward_with_hidden(
        self, tokens: torch.Tensor, labels: torch.Tensor, layers: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``(logits, {layer: hidden})``: the logits of ``forward`` and the outputs (B, L, dim) of
        the 1-based blocks in ``layers`` (residual stream, before the final norm) at all L positions
        (L = T + 1, plus PAR's n - 1 learnable tokens). ``ValueError`` for a block the GPT lacks."""
        h, hidden = self._blocks(tokens, labels, set(layers), None)
        return self.output(self.norm(h[:, : self.args.cls_token_num + tokens.size(1)])).float(), hidden

    def hidden_state(self, tokens: torch.Tensor, labels: torch.Tensor, layer: int) -> torch.Tensor:
        """The output (B, L, dim) of 1-based block ``layer``; the blocks after it are not run."""
        return self._blocks(tokens, labels, set(), layer)[0]

    def _blocks(
        self, tokens: torch.Tensor, labels: torch.Tensor, keep: set[int], stop_after: int | None,
        whole_grid: bool = False,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        outside = sorted(i for i in {*keep, *([stop_after] if stop_after is not None else [])}
                         if not 1 <= i <= self.args.n_layer)
        if outside:  # else an empty result, found only where a caller looks the block up
            raise ValueError(f"block(s) {outside} outside this GPT's blocks 1..{self.args.n_layer}")
        limit = self.args.seq_len - (0 if whole_grid else 1)  # training inputs stop one token short
        if tokens.size(1) > limit:
            raise ValueError(
                f"{tokens.size(1)} input tokens do not fit a {self.args.grid_size}x{self.args.grid_size} grid"
                f" (at most {limit}); is grid_size set to the tokenizer's grid?"
            )
        h = self.embed(tokens, labels)
        rope = rope_factors(self.freqs_cis[: h.size(1)])
        mask = self.attn_mask[: h.size(1), : h.size(1)] if self.parallel else None
        hidden: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers, start=1):
            h = layer(h, rope, mask=mask)
            if index in keep:
                hidden[index] = h
            if index == stop_after:
                break
        return h, hidden

    # ------------------------------------------------------------------ decoding
    def setup_kv_cache(self, batch: int, dtype: torch.dtype | None = None) -> DecodePlan:
        """Allocate every layer's cache for ``batch`` sequences (``dtype``: the weights' by default)
        and return the static plan of this model's decode schedule (``mirai.models.decoding``)."""
        length = self.args.max_len
        allowed = (self.attn_mask[:length, :length].cpu() if self.parallel
                   else torch.ones(length, length, dtype=torch.bool).tril())
        device = self.output.weight.device
        plan = decode_plan(self.decode_schedule(), allowed, self.args.cls_token_num, device)
        dtype = dtype or self.output.weight.dtype
        for layer in self.layers:
            attn = layer.attention
            attn.kv_cache = KVCache(batch, plan.cache_len, attn.n_kv_head, attn.head_dim, dtype, device)
        return plan

    def clear_kv_cache(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None

    def decode_schedule(self) -> list[DecodePass]:
        """The forward passes that generate one image in this model's order (``GPTArgs.decode_schedule``)."""
        return self.args.decode_schedule()

    def pass_inputs(self, step: DecodePass, fed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, T, dim) that decoding pass ``step`` feeds: the class token for the prefill,
        else the sampled tokens ``fed`` (B, len(step.feed)) of ranks ``step.feed``, then any
        learnable tokens (PAR's transition pass)."""
        if not step.feed:
            return self.embed(None, labels)
        h = self.tok_embeddings(fed)
        if step.learnable:
            h = torch.cat([h, self.spe_tok_embeddings(len(h))[:, : step.learnable].to(h.dtype)], dim=1)
        return h

    def decode_step(self, h: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """One pass of cached decoding (after ``setup_kv_cache``): embeddings ``h`` (B, W, dim) at
        RoPE rows ``positions`` (W,) are stored at cache ``slots`` (W,) and attend where ``mask``
        (W, cache length) is True; returns float32 logits (B, W, V). Every pass of a plan has these
        shapes, so ``torch.compile(model.decode_step, fullgraph=True)`` compiles one graph for all."""
        rope = rope_factors(self.freqs_cis[positions])
        for layer in self.layers:
            h = layer(h, rope, slots, mask)
        return self.output(self.norm(h)).float()
