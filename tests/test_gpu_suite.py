"""benchmarks/gpu_suite.py: the one command for issue 15's GPU measurements, run here as its CPU smoke."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common
import gpu_suite


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_smoke_run_records_every_part_with_numbers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--out", str(tmp_path), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json", "suite.log", "summary.md"]
    suite = json.loads((tmp_path / "suite.json").read_text())
    status = {name: record["status"] for name, record in suite["parts"].items()}
    assert status == {"matmul": "ok", "overhead_eager": "ok", "fsdp_vs_ddp": "ok", "decode_small": "ok",
                      "decode_large": "skipped", "overhead_compiled": "skipped"}
    d = suite["derived"]
    assert _positive(d["limits"]["matmul_flops_per_s"]) and d["limits"]["bf16_datasheet_flops_per_s"] is None
    training = d["overhead_eager"]
    assert set(training["variants"]) == {"baseline", "mirai_i", "mirai_e"}
    for row in training["variants"].values():
        for key in ("step_s", "images_per_s", "model_flops_per_s", "mfu_matmul", "peak_memory_bytes",
                    "peak_ratio_to_baseline"):
            assert _positive(row[key]), (key, row)
        assert row["mfu_datasheet"] is None  # a CPU has no datasheet bf16 peak
    assert training["variants"]["baseline"]["peak_ratio_to_baseline"] == 1.0
    assert isinstance(training["mirai_e_peak_ratio_target_met"], bool)
    # Mirai-E adds heads and a teacher pass to the baseline's work: more FLOPs per image.
    assert training["variants"]["mirai_e"]["model_flops_per_image"] > training["variants"]["baseline"][
        "model_flops_per_image"]
    (sampling,) = d["sampling"].values()
    assert all(_positive(sampling[k]) for k in ("eager_tokens_per_s", "compiled_tokens_per_s", "compiled_speedup"))
    fsdp = d["fsdp_vs_ddp"]
    assert set(fsdp["variants"]) == {"1 x DDP", "1 x FSDP2"}
    assert all(_positive(v["step_s"]) and _positive(v["peak_memory_bytes"]) for v in fsdp["variants"].values())
    assert _positive(fsdp["steps_per_s_ratios"]["fsdp_over_ddp_1"])
    summary = (tmp_path / "summary.md").read_text()
    assert "## Training step, eager" in summary and "## Sampling" in summary and "## FSDP2 against DDP" in summary


def test_a_failing_part_is_recorded_with_its_log(tmp_path):
    part = gpu_suite.Part("broken", "no_such_benchmark.py", [], [], 60)
    args = argparse.Namespace(smoke=True)
    with open(tmp_path / "suite.log", "w") as log:
        record = gpu_suite.run_part(part, args, tmp_path, log, timeout=60)
    assert record["status"] == "failed" and record["returncode"] != 0
    assert "no_such_benchmark.py" in record["log_tail"]
    assert gpu_suite.derive({"broken": record})["limits"]["matmul_flops_per_s"] is None


def test_a_part_over_its_limit_is_ended_and_recorded(tmp_path):
    # A 6000² fp32 matmul part takes tens of seconds on one CPU thread: ended at 2 s.
    part = gpu_suite.Part("matmul", "gpu_suite.py", [], ["--matmul-size", "6000"], 60)
    with open(tmp_path / "suite.log", "w") as log:
        record = gpu_suite.run_part(part, argparse.Namespace(smoke=True), tmp_path, log, timeout=2)
    assert record["status"] == "timeout" and record["returncode"] < 0 and "result" not in record
    assert 2 <= record["seconds"] < 20


def test_mfu_and_targets_on_an_h200_record():
    overhead = {"settings": {"batch": 32, "bf16": True, "compile": False},
                "machine": {"device": "cuda", "gpu": "NVIDIA H200"},
                "flops_per_image": {"executed": {"baseline": 1e11, "mirai_e": 1.4e11}},
                "seconds_per_step": {"baseline": [0.011, 0.010, 0.012], "mirai_e": [0.02, 0.02, 0.02]},
                "step_time_ratio_to_baseline": {"baseline": 1.0, "mirai_e": 2.0},
                "memory": {"baseline": {"cuda_peak_bytes": 100}, "mirai_e": {"cuda_peak_bytes": 108}}}
    matmul = {"machine": {"device": "cuda", "gpu": "NVIDIA H200"}, "dtype": "torch.bfloat16", "flops_per_s": 8e14}
    d = gpu_suite.derive({"matmul": {"status": "ok", "result": matmul},
                          "overhead_eager": {"status": "ok", "result": overhead}})
    baseline, mirai_e = d["overhead_eager"]["variants"]["baseline"], d["overhead_eager"]["variants"]["mirai_e"]
    assert baseline["model_flops_per_s"] == pytest.approx(1e11 * 32 / 0.011)  # the median step
    assert baseline["mfu_datasheet"] == pytest.approx(1e11 * 32 / 0.011 / 989.4e12)
    assert mirai_e["mfu_matmul"] == pytest.approx(1.4e11 * 32 / 0.02 / 8e14)
    assert mirai_e["peak_ratio_to_baseline"] == pytest.approx(1.08)
    assert d["overhead_eager"]["baseline_mfu_target_met"] is False  # 29% < 40%
    assert d["overhead_eager"]["mirai_e_peak_ratio_target_met"] is True  # 1.08 <= 1.10


def test_bf16_peak_of_known_and_unknown_gpus():
    assert _common.bf16_peak_flops("NVIDIA H200") == 989.4e12
    assert _common.bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert _common.bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert _common.bf16_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert _common.bf16_peak_flops("NVIDIA GeForce RTX 4090") is None


def test_parts_beyond_the_budget_are_skipped_and_recorded(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--out", str(tmp_path), "--smoke",
                           "--only", "overhead_eager,overhead_compiled", "--budget", "1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    parts = json.loads((tmp_path / "suite.json").read_text())["parts"]
    assert parts["overhead_eager"]["status"] == "skipped"
    assert parts["overhead_eager"]["reason"].endswith("s left of the 1 s budget")
    assert parts["overhead_compiled"]["status"] == "skipped"
    assert "| overhead_eager | skipped" in (tmp_path / "summary.md").read_text()
