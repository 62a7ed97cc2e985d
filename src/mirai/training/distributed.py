"""Process-group set-up for one process or ``torchrun`` (NCCL on GPU, gloo on CPU), and the
wrapping of the model for the configured strategy (DDP or FSDP2)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mirai.data.options import resolve_device
from mirai.models.gpt import GPT
from mirai.training.config import DistributedConfig
from mirai.training.fsdp import checkpoint_blocks, shard_training


@dataclass
class DistInfo:
    """This process's rank, world size, local rank and device, read from torchrun's environment."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``mirai.data.options.resolve_device``'s device, on this process's GPU (``local_rank``) when
    it is CUDA without an index; ``ConfigError`` for a device this machine does not have."""
    device = torch.device(resolve_device(preference))
    if device.type == "cuda":
        index = local_rank if device.index is None else device.index
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_main() -> bool:
    """Rank 0, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when a process group exists; a no-op in a single process."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group if one was created."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_training(objective: nn.Module, gpt: GPT, frozen: list[GPT], cfg: DistributedConfig, info: DistInfo,
                      find_unused: bool) -> nn.Module:
    """The module the trainer calls each micro-batch. One process: ``objective`` itself; several:
    DDP around it (``find_unused``: parameters may get no gradient, e.g. heads during a foresight
    warm-up), or with ``strategy: fsdp`` the sharded objective (``mirai.training.fsdp``; then the
    EMA/teacher copies in ``frozen`` are sharded too). Activation checkpointing (per block of
    ``gpt``) applies to every strategy. Call before building the optimizer; collective."""
    if cfg.activation_checkpointing:
        checkpoint_blocks(gpt)
    if not info.enabled:
        return objective
    if cfg.strategy == "fsdp":
        return shard_training(objective, gpt, frozen, cfg, info.device)
    return DistributedDataParallel(objective, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)
