"""No host-device synchronisation between two log steps (issue 15, item 2), on the CPU path.

A GPU step waits for the device whenever the host reads a device value (``.item()``, ``float()``,
``bool()``, ``.tolist()``, ``.cpu()``, ``.numpy()``) or copies a host list into a device tensor
(``new_tensor``: pageable memory is copied in stream order). On the CPU nothing waits, so the test
tracks which tensors are "device" tensors instead: the model's parameters and buffers, the EMA,
the divergence record, whatever a batch becomes after ``.to(device)``, and everything computed
from those (followed through a ``TorchFunctionMode``). Host data (code ids, the learning rate,
AdamW's step counters, which PyTorch keeps on the host) is not. Then it counts reads.
"""

from __future__ import annotations

import traceback
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from mirai.training.data import to_device
from mirai.training.metrics import LogWindow
from mirai.training.trainer import Trainer

from helpers import MIRAI_E, encoder_overrides, make_cfg

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
         torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
         torch.Tensor.new_tensor}  # a copy from pageable host memory waits for the GPU too


class DeviceReads(TorchFunctionMode):
    """Records (function name, stack) for each host read of a device-derived tensor."""

    def __init__(self, device_tensors):
        super().__init__()
        self.device: dict[int, weakref.ref] = {}  # by id: tensors compare element-wise, not by identity
        self.reads: list[tuple[str, str]] = []
        for t in device_tensors:
            self._mark(t)

    def _mark(self, t: torch.Tensor) -> None:
        self.device[id(t)] = weakref.ref(t)

    def _is_device(self, t: torch.Tensor) -> bool:
        ref = self.device.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        derived = any(self._is_device(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        if derived and func in READS:
            self.reads.append((func.__name__, "".join(traceback.format_stack(limit=8)[:-1])))
        out = func(*args, **kwargs)
        if derived or getattr(func, "__name__", "") == "to":  # a batch moved to the device is device data
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._mark(t)
        return out


@pytest.mark.parametrize("variant", ["baseline", "mirai_e", "mirai_i", "mirai_i_cached"])
def test_steps_between_log_steps_never_read_the_device(stores, tmp_path, monkeypatch, variant):
    extra = {"baseline": {}, "mirai_e": {**MIRAI_E, "foresight.warmup": 0}, "mirai_i": encoder_overrides(stores),
             "mirai_i_cached": {**encoder_overrides(stores), "foresight.cache_features": "true"}}[variant]
    trainer = Trainer(make_cfg(stores, tmp_path / "run", steps=7, log_every=3, **extra))
    mode = DeviceReads([*trainer.objective.parameters(), *trainer.objective.buffers(), *trainer.ema.parameters(),
                        trainer.watch.state])
    reads_at_step_start = []
    step = Trainer.train_step

    def counted(self):
        reads_at_step_start.append(len(mode.reads))
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", counted)
    with mode:
        trainer.fit()  # step 7, the last, also evaluates, saves and samples: not counted
    per_step = [b - a for a, b in zip(reads_at_step_start, reads_at_step_start[1:])]
    where = "\n".join(f"{name}:\n{stack}" for name, stack in mode.reads[:3])
    # Steps 3 and 6 log: one read of the window's sums and the divergence record together.
    assert per_step == [0, 0, 1, 0, 0, 1], f"reads per step {per_step}; first reads:\n{where}"


def test_batches_keep_the_row_indices_on_the_host():
    # A cached-feature lookup reads them on the host: on the device they would have to be copied back.
    host = {"tokens": torch.zeros(2, 16, dtype=torch.long), "labels": torch.zeros(2, dtype=torch.long),
            "image_index": torch.tensor([4, 1]), "view_index": torch.tensor([0, 3])}
    batch = to_device(host, "meta")
    assert {k: v.device.type for k, v in batch.items()} == {
        "tokens": "meta", "labels": "meta", "image_index": "cpu", "view_index": "cpu"}
    assert batch["image_index"] is host["image_index"]


def test_the_log_window_averages_device_values_and_keeps_the_latest_schedule_values():
    window = LogWindow()
    window.add({"loss/ntp": torch.tensor(2.0), "lr": 1e-4})
    window.add({"loss/ntp": torch.tensor(4.0), "loss/foresight": torch.tensor(1.0), "lr": 2e-4})
    means, extra = window.read(torch.tensor([7.0, -1.0], dtype=torch.float64))
    assert means == {"loss/ntp": 3.0, "loss/foresight": 1.0, "lr": 2e-4} and extra == [7.0, -1.0]
    assert window.read() == ({}, [])  # a new window
