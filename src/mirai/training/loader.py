"""Training steps prepared ahead by ``torch.utils.data.DataLoader`` worker processes.

Item ``s`` of the loader's dataset is everything one rank trains on in optimizer step ``s`` (its
micro-batches, made by the same function the in-process path calls), and the sampler counts up
from the step training starts at. So a worker computes exactly the rows the training process
would have read itself, for any start step (``--resume``) and any rank: the order stays a pure
function of (seed, step), and the loader only moves the work off the training thread. With
``pin_memory`` (CUDA devices) the batches arrive in page-locked memory, so the copy to the
device can run asynchronously (``non_blocking``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from mirai.data.workers import reraised_one_line
from mirai.errors import ConfigError

# More workers than this per GPU process rarely helps Mirai-I (each renders its share of one step
# at a time) and multiplies the pinned and shared memory held by prefetched steps.
MAX_AUTO_WORKERS = 8
# An explicit data.workers above this many per usable CPU is refused: processes, not a speed-up.
MAX_WORKERS_PER_CPU = 4


def resolve_workers(setting: int | str, device: torch.device, fields: frozenset[str]) -> int:
    """Worker processes per rank for ``data.workers``: the number itself, or for ``"auto"`` 0 when
    batches carry only tokens (a memory-mapped slice, cheaper read here than passed between
    processes) or the device is a CPU (workers would compete with training for its cores), else
    up to ``MAX_AUTO_WORKERS`` from the CPUs this process may use shared among the node's ranks
    (``LOCAL_WORLD_SIZE``, set by ``torchrun``)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if setting != "auto":
        limit = MAX_WORKERS_PER_CPU * cpus
        if int(setting) > limit:  # a typo (100000) would start that many processes
            raise ConfigError(f"data.workers={setting} is more than {MAX_WORKERS_PER_CPU} per CPU this process may "
                              f"use ({cpus}): give at most {limit}, or data.workers=auto")
        return int(setting)
    if not fields or device.type != "cuda":
        return 0
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_ranks)))


class _Steps(Dataset):
    """Map-style dataset whose item ``s`` is ``make_step(s)``; it has no length (steps run on past
    epoch ends), so it is only read through an explicit sampler."""

    def __init__(self, make_step: Callable[[int], list[dict]]):
        self.make_step = make_step

    def __getitem__(self, step: int) -> list[dict]:
        return self.make_step(step)


class StepLoader:
    """Steps ``make_step(s)`` for s = start, start + 1, ... from ``workers`` processes, each keeping
    ``prefetch`` steps ready. ``get(step)`` returns them in order and restarts the workers at
    ``step`` when asked for any other step than the next one (a resumed or rewound trainer)."""

    def __init__(self, make_step: Callable[[int], list[dict]], workers: int, prefetch: int, pin_memory: bool):
        if workers < 1:
            raise ValueError(f"StepLoader needs at least one worker process, got {workers}")
        self.make_step, self.workers, self.prefetch, self.pin_memory = make_step, workers, prefetch, pin_memory
        self._batches = None
        self._next: int | None = None

    def get(self, step: int) -> list[dict]:
        """Step ``step``'s micro-batches (host tensors, pinned when ``pin_memory``)."""
        if self._batches is None or step != self._next:
            self.close()
            # A generator of its own: without one, starting workers draws their base seed from the global RNG,
            # which dropout then reads on from, so the weights would depend on data.workers. (The steps do not
            # use the workers' seeds: they are a function of (seed, step).)
            loader = DataLoader(_Steps(self.make_step), batch_size=None, sampler=itertools.count(step),
                                num_workers=self.workers, prefetch_factor=self.prefetch, pin_memory=self.pin_memory,
                                generator=torch.Generator())
            self._batches = reraised_one_line(loader)
        self._next = step + 1
        try:
            return next(self._batches)
        except BaseException:
            self.close()  # the generator is finished: the next call starts fresh workers
            raise

    def close(self) -> None:
        """Stop the worker processes (the next ``get`` starts new ones)."""
        if self._batches is not None:
            self._batches.close()
        self._batches, self._next = None, None
