"""FSDP2 for the trainer: each transformer block its own shard unit, then the model's root.

The layout follows PyTorch's FSDP2 recipe (``torch.distributed.fsdp.fully_shard``, as in
torchtitan's ``apply_fsdp``): a block's parameters are all-gathered just before it runs and
freed after it, so no rank ever holds more than one block's full weights plus its own shards.
The EMA and an EMA teacher are sharded the same way (identical placements, so ``update_ema``
updates shard by shard with no communication); the frozen Mirai-I encoder is not touched and
stays a full replica on every rank. Master weights, AdamW state and the gradient reduction
stay fp32; blocks compute in ``param_dtype`` (bf16 on GPUs).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import torch
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from mirai.models.gpt import GPT
from mirai.training.config import DistributedConfig

# GPT methods other than ``forward`` that the trainer, the Mirai-E teacher and validation call:
# FSDP2 gathers a root's own parameters (embeddings, final norm, output) only around these.
GPT_ENTRY_POINTS = ("forward_with_hidden", "hidden_state")


def param_dtype(cfg: DistributedConfig, device: torch.device) -> torch.dtype:
    """The compute dtype of sharded blocks: ``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if cfg.param_dtype == "bf16" or (cfg.param_dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def checkpoint_blocks(gpt: GPT) -> None:
    """Per-block activation checkpointing (composable: parameter names, hence checkpoints, stay
    the same): each block's activations are recomputed in backward instead of kept."""
    for block in gpt.layers:
        checkpoint_activations(block)


def shard_gpt(gpt: GPT, policy: MixedPrecisionPolicy, trained: bool = False) -> None:
    """Shard ``gpt`` in place over the default process group: one unit per block, then the root
    (embeddings, final norm, output layer). A ``trained`` model keeps its last block and root
    gathered after forward, since backward needs them at once (as torchtitan does). Collective."""
    last = len(gpt.layers) - 1
    # A block's inputs are the hidden state, already in the compute dtype, and the RoPE factors, which stay
    # fp32 as in LlamaGen (whose FSDP leaves block inputs uncast): so blocks never cast their inputs.
    block_policy = replace(policy, cast_forward_inputs=False)
    for index, block in enumerate(gpt.layers):
        fully_shard(block, mp_policy=block_policy, reshard_after_forward=not (trained and index == last))
    fully_shard(gpt, mp_policy=policy, reshard_after_forward=not trained)
    for method in GPT_ENTRY_POINTS:
        register_fsdp_forward_method(gpt, method)


class ShardedStep(nn.Module):
    """What the trainer calls each micro-batch under FSDP: the sharded objective, plus DDP's
    ``no_sync`` (gradients of all but the last micro-batch are kept unreduced)."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective

    def forward(self, *args, **kwargs):
        return self.objective(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        self.objective.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.objective.set_requires_gradient_sync(True)


def shard_training(objective: nn.Module, gpt: GPT, frozen: list[GPT], cfg: DistributedConfig,
                   device: torch.device) -> ShardedStep:
    """Shard the trained ``gpt`` (a submodule of ``objective``), then ``objective``'s remaining
    parameters (the foresight heads) as the root; shard each frozen copy in ``frozen`` (the EMA, a
    teacher) with the same per-block layout. Call before building the optimizer (parameters become
    DTensors). Collective: every rank calls it with identical weights."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype(cfg, device), reduce_dtype=torch.float32)
    shard_gpt(gpt, policy, trained=True)
    # The objective's inputs are token ids and [0, 1] images for a replicated encoder: never cast them.
    fully_shard(objective, mp_policy=MixedPrecisionPolicy(param_dtype=policy.param_dtype, reduce_dtype=torch.float32,
                                                          cast_forward_inputs=False),
                reshard_after_forward=False)
    seen: set[int] = set()
    for model in frozen:
        if id(model) not in seen:  # the paper's Mirai-E teacher is the EMA itself
            seen.add(id(model))
            shard_gpt(model, policy)
    return ShardedStep(objective)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) wrapped this module."""
    return isinstance(module, FSDPModule)


def replicated(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a value computed from sharded tensors (e.g. ``clip_grad_norm_``'s total
    norm over DTensor gradients, which every rank already holds whole); ``value`` itself otherwise."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of ``module`` on rank 0, in CPU memory (empty on other ranks) — for
    export; a plain module's own state dict when it is not sharded. Collective when sharded."""
    if not is_sharded(module):
        return module.state_dict()
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_for_sampling(model: GPT, is_main: bool, device: torch.device) -> GPT | None:
    """A model rank 0 can sample from alone: ``model`` itself when it is not sharded, else a
    temporary full copy built from its gathered weights (decoding calls many GPT methods and
    caches keys/values per block, which a sharded model cannot do on one rank). ``None`` on the
    other ranks. Collective when sharded."""
    if not is_sharded(model):
        return model if is_main else None
    state = full_state_dict(model)
    if not is_main:
        return None
    name, args = model.checkpoint_config()
    copy = GPT.from_checkpoint_config(name, args)
    copy.load_state_dict(state)
    return copy.to(device).eval().requires_grad_(False)
