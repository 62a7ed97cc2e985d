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


# In-process runs of the suite's command line: run_part is replaced by a fake that returns a
# finished part at once, so that argument checks and merging are tested without the parts.
MATMUL = {"benchmark": "matmul", "machine": {"device": "cpu"}, "dtype": "torch.float32", "flops_per_s": 2e10}
DECODE = {"settings": {"batch": 2, "dtype": "fp32"}, "tokens_per_s": {"eager": 100.0, "compiled": 150.0},
          "speedup_compiled_over_eager": 1.5, "compile_seconds": 3.0}


@pytest.fixture
def fake_parts(monkeypatch):
    """Results the fake run_part returns, by part name (a test may change them between runs)."""
    results = {"matmul": dict(MATMUL), "decode_small": dict(DECODE)}

    def run_part(part, args, tmp, log, timeout):
        log.write(f"output of {part.name}\n")
        return {"status": "ok", "seconds": 1.0, "returncode": 0, "command": [part.script], "limit_s": timeout,
                "result": dict(results[part.name])}

    monkeypatch.setattr(gpu_suite, "run_part", run_part)
    monkeypatch.setattr(gpu_suite.torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    return results


def _suite(out):
    return json.loads((out / "suite.json").read_text())


def test_a_rerun_into_the_same_folder_merges_with_the_earlier_parts(tmp_path, fake_parts):
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "matmul"]) == 0
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "decode_small"]) == 0
    suite = _suite(tmp_path)
    assert list(suite["parts"]) == ["matmul", "decode_small"]
    assert [r["parts"] for r in suite["runs"]] == [["matmul"], ["decode_small"]]
    assert suite["parts"]["matmul"]["run"] == 1 and suite["parts"]["decode_small"]["run"] == 2
    # The derived numbers come from both runs' parts.
    assert suite["derived"]["limits"]["matmul_flops_per_s"] == 2e10
    assert suite["derived"]["sampling"]["batch_2"]["compiled_speedup"] == 1.5
    summary = (tmp_path / "summary.md").read_text()
    assert "| matmul | ok | 1 | 1 |" in summary and "| decode_small | ok | 1 | 2 |" in summary
    assert "## Sampling" in summary and "measured float32 matmul 0.0 TFLOP/s" in summary
    log = (tmp_path / "suite.log").read_text()
    assert log.index("##### run 1") < log.index("output of matmul") < log.index("##### run 2") < log.index(
        "output of decode_small")
    # A part run again replaces its earlier record; the others stay.
    fake_parts["matmul"]["flops_per_s"] = 3e10
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "matmul"]) == 0
    suite = _suite(tmp_path)
    assert suite["parts"]["matmul"]["run"] == 3 and suite["parts"]["decode_small"]["run"] == 2
    assert suite["derived"]["limits"]["matmul_flops_per_s"] == 3e10 and "sampling" in suite["derived"]
    assert (tmp_path / "suite.log").read_text().count("output of matmul") == 2


def test_a_part_skipped_in_a_rerun_keeps_its_earlier_result(tmp_path, fake_parts):
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "decode_small"]) == 0
    # decode_small needs 30 s of budget: skipped now, so the earlier result stays.
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "decode_small", "--budget", "1"]) == 0
    suite = _suite(tmp_path)
    assert suite["parts"]["decode_small"]["status"] == "ok" and suite["parts"]["decode_small"]["run"] == 1
    assert len(suite["runs"]) == 2
    skipped = {"status": "skipped", "reason": "1 s left"}
    assert gpu_suite.merge({"a": skipped}, "a", {"status": "ok"}) == {"a": {"status": "ok"}}
    assert gpu_suite.merge({"a": {"status": "failed"}}, "a", skipped) == {"a": {"status": "failed"}}


@pytest.mark.parametrize("content, complaint", [
    ("{not json", "cannot be read as JSON"),
    ('{"parts": {}}', "is not a gpu_suite record"),
    ('{"suite": "gpu_suite", "smoke": false, "parts": {}, "runs": []}', "holds a CUDA record"),
])
def test_a_suite_json_that_cannot_be_merged_is_refused_untouched(tmp_path, fake_parts, capsys, content, complaint):
    (tmp_path / "suite.json").write_text(content)
    with pytest.raises(SystemExit) as exit_:
        gpu_suite.main(["--out", str(tmp_path), "--smoke"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and complaint in error
    assert str(tmp_path / "suite.json") in error and "give another --out, or delete the file" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json"]
    assert (tmp_path / "suite.json").read_text() == content


@pytest.mark.parametrize("argv, flag", [
    (["--budget", "-5"], "--budget"), (["--budget", "0"], "--budget"), (["--budget", "nan"], "--budget"),
    (["--budget", "inf"], "--budget"), (["--budget", "soon"], "--budget"),
    (["--only", ""], "--only"), (["--only", ","], "--only"), (["--only", "matmul,nope"], "--only"),
])
def test_bad_arguments_are_reported_against_their_flag_before_the_cuda_check(tmp_path, fake_parts, capsys,
                                                                            argv, flag):
    out = tmp_path / "new"
    with pytest.raises(SystemExit) as exit_:
        gpu_suite.main(["--out", str(out), *argv])  # no --smoke, and CUDA is reported missing
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}: " in error and "CUDA" not in error
    assert ("> 0" if flag == "--budget" else "comma list of one or more of matmul, ") in error
    assert not out.exists()


def test_out_is_required_and_shown_so_in_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_suite.main([])
    assert exit_.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_suite.main(["--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert " --out DIR" in usage and "[--out" not in usage


@pytest.mark.parametrize("where", ["file", "under_file", "uncreatable"])
def test_an_out_that_cannot_hold_the_results_is_a_clear_error(tmp_path, fake_parts, capsys, where):
    (tmp_path / "a_file").write_text("x")
    out = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "results",
           "uncreatable": Path("/proc/mirai-gpu-suite-test/results")}[where]
    if where == "uncreatable" and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc, where no folder can be made")
    with pytest.raises(SystemExit) as exit_:
        gpu_suite.main(["--out", str(out), "--smoke"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument" not in error and "--out: " in error and str(out) in error
    fix = {"file": "is a file: give a folder", "under_file": f"lies under the file {tmp_path / 'a_file'}",
           "uncreatable": "give a folder you can write to"}[where]
    assert fix in error and "Traceback" not in error


def test_help_tells_a_user_what_is_needed_and_nothing_of_the_lab():
    text = gpu_suite.__doc__
    for needed in ("PyTorch", "timm", "safetensors", "PyYAML", "NumPy", "PYTHONPATH", "--out DIR", "--smoke",
                   "suite.json", "summary.md", "suite.log", "merges"):
        assert needed in text, needed
    for internal in ("/work/", "KINDS", "run tool", "device tool", "carry", "MiB", "timeout_s", "lent"):
        assert internal not in text, internal


def test_summary_has_no_double_spaces_without_a_matmul_result():
    suite = {"smoke": True, "runs": [{"started": "2026-01-01 00:00:00", "command": "python3 gpu_suite.py"}],
             "parts": {"matmul": {"status": "failed", "seconds": 2.0, "run": 1}}}
    suite["derived"] = gpu_suite.derive(suite["parts"])
    text = gpu_suite.summary(suite)
    assert "measured matmul -." in text and "  " not in text
