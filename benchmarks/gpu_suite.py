"""GPU measurements of Mirai in one command: GPT-B training-step time, MFU and peak memory of the
baseline, Mirai-I and Mirai-E at batch 32 in bf16, KV-cache sampling tokens/s, FSDP2 against DDP.

    python3 benchmarks/gpu_suite.py --out DIR [--budget SECONDS] [--only PART,...]   # on CUDA
    python3 benchmarks/gpu_suite.py --out DIR --smoke    # the same parts on a CPU, tiny sizes

Run it in a Mirai checkout (the paths above are from its root) with a Python that has PyTorch,
timm, safetensors, PyYAML, NumPy, tqdm and Pillow. Mirai need not be installed: the suite puts the
checkout's ``src`` on the parts' PYTHONPATH. Nothing is downloaded (the image encoders are random).

Each part runs an existing benchmark script in its own process (fresh GPU memory, and a part
that fails or hangs cannot take the others down) under a wall-clock limit: the part's own cap and
what is left of ``--budget`` seconds (default 420, i.e. at most 7 minutes; 300 with --smoke),
whichever is smaller. ``--only`` picks parts by name; they run in this order:

* ``matmul``: the bf16 rate of a large square ``torch.mm`` (8192³ on CUDA; fp32 256³ with --smoke);
* ``overhead_eager``: ``foresight_overhead.py --device cuda --batch 32``: GPT-B (16x16 tokens,
  V=16384, 1000 classes) with baseline, Mirai-I (K=1, a random DINOv2-B/14-shaped encoder at
  224 px) and Mirai-E (K=3), bf16 autocast, eager; peak memory of each variant from a fresh
  process (``torch.cuda.max_memory_allocated``);
* ``fsdp_vs_ddp``: ``ddp_fsdp_scaling.py --device cuda``: GPT-B, batch 32, one process on one GPU
  (nccl) wrapped in DDP and in FSDP2: step time and peak memory;
* ``decode_small``: ``decode_compile.py``: GPT-B KV-cache sampling at batch 16 (cfg 2.0, so 32
  sequences are decoded; bf16), eager against ``torch.compile`` (compiled once, untimed), tokens/s;
* ``overhead_compiled`` (skipped with under 90 s left): as ``overhead_eager`` with ``--compile``,
  baseline and Mirai-E only, no peak-memory processes (compiling a variant takes a minute or so);
* ``decode_large`` (skipped with under 60 s left): as ``decode_small`` at batch 64.

Derived here, from the parts' JSON: MFU = model FLOPs per second / the GPU's bf16 dense peak,
model FLOPs being ``foresight_overhead.py``'s "executed" convention (6 x non-embedding parameters x
tokens + attention scores, ``mirai.analysis.flops``, as ``train_mfu.py``; heads, the EMA teacher and
the Mirai-I encoder forward included for those variants). The peak is the datasheet figure when
``_common.bf16_peak_flops`` knows the GPU (H200/H100 SXM 989.4e12, A100 312e12), and MFU is
reported against the measured ``matmul`` rate too (the only limit for an unknown GPU or a CPU).
Targets: baseline MFU >= 40% on an H200, Mirai-E peak memory <= 1.10 x the baseline.

Three files in the folder ``--out`` (made if missing): ``suite.json`` (each part's status, wall
time, its whole JSON and, when it failed, the end of its log; the derived numbers; one entry per
invocation under "runs"), ``summary.md`` (tables) and ``suite.log`` (every part's output). Both
results files are rewritten after every part, so a run cut short keeps what finished. Running
again into the same folder merges: the parts run now replace their earlier records (a part skipped
for lack of budget keeps its earlier result), the others stay, the derived numbers and summary are
recomputed from all of them, and suite.log grows by a headed section. A --smoke record and a CUDA
record do not mix: use another --out. Exit status: 0 when every part run now succeeded or was
skipped, 2 for a bad argument, 1 otherwise.

``--smoke``: the same parts on a CPU (GPT-Micro/Nano on 8x8 tokens, a random ViT-S/14 at 112 px,
batch 2, one round, gloo), except ``overhead_compiled`` and ``decode_large``; about a minute, for
tests/test_gpu_suite.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import _common as C

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
GPT_B = ["--model", "GPT-B", "--grid", "16", "--vocab", "16384", "--classes", "1000"]
TINY = ["--grid", "8", "--vocab", "512", "--classes", "10"]


@dataclass
class Part:
    name: str
    script: str  # a benchmark script beside this one
    gpu: list[str]  # its arguments on CUDA (the suite adds --device and --out)
    smoke: list[str] | str  # its arguments with --smoke, or why it is not run then
    cap_s: float  # wall-clock limit on CUDA (at most the budget that is left)
    min_s: float = 30.0  # skipped when less than this is left


PARTS = [
    Part("matmul", "gpu_suite.py", ["--matmul-size", "8192"], ["--matmul-size", "256"], 60),
    Part("overhead_eager", "foresight_overhead.py", ["--batch", "32", "--repeats", "5"],
         ["--model", "GPT-Micro", *TINY, "--encoder", "dinov2_vits14", "--image-size", "112", "--batch", "2",
          "--peak-batch", "2", "--repeats", "1", "--threads", "1"], 180),
    Part("fsdp_vs_ddp", "ddp_fsdp_scaling.py",
         [*GPT_B, "--batch", "32", "--steps", "10", "--warmup", "3", "--repeats", "2"],
         ["--model", "GPT-Micro", *TINY, "--batch", "2", "--steps", "2", "--warmup", "1", "--repeats", "1",
          "--variants", "1 x DDP,1 x FSDP2"], 120),
    Part("decode_small", "decode_compile.py", [*GPT_B, "--batch", "16", "--dtype", "bf16", "--repeats", "3"],
         ["--model", "GPT-Nano", *TINY, "--batch", "2", "--repeats", "1", "--threads", "1"], 100),
    Part("overhead_compiled", "foresight_overhead.py",
         ["--batch", "32", "--repeats", "3", "--compile", "--peak-batch", "0", "--variants", "baseline,mirai_e"],
         "compiling a training step takes minutes on a CPU", 180, min_s=90),
    Part("decode_large", "decode_compile.py", [*GPT_B, "--batch", "64", "--dtype", "bf16", "--repeats", "3"],
         "decode_small covers the same code on a CPU", 100, min_s=60),
]


def measure_matmul(path: Path, size: int, device: torch.device) -> None:
    """The ``matmul`` part: FLOP/s of ``torch.mm`` of two ``size``² matrices (bf16 on CUDA, fp32 on
    CPU): 5 rounds of 10 products after 3 warm-ups, the median round; written as JSON to ``path``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    calls = 10

    def products() -> None:
        for _ in range(calls):
            torch.mm(a, b)

    times, _ = C.interleaved({"mm": products}, repeats=5, warmup=3, device=device)
    rates = [2 * size**3 * calls / t for t in times["mm"]]
    C.write_json("matmul", {"benchmark": "matmul", "machine": C.machine(device), "dtype": str(dtype),
                            "size": size, "flops_per_s": statistics.median(rates), "flops_per_s_rounds": rates},
                 path)


def run_part(part: Part, args: argparse.Namespace, tmp: Path, log, timeout: float) -> dict:
    """Run one part in its own process group under ``timeout`` seconds; its record for suite.json."""
    result = tmp / f"{part.name}.json"
    device = "cpu" if args.smoke else "cuda"
    extra = part.smoke if args.smoke else part.gpu
    if part.name == "matmul":
        command = [sys.executable, str(HERE / part.script), "--matmul-json", str(result), "--device", device, *extra]
    else:
        command = [sys.executable, str(HERE / part.script), "--device", device, "--out", str(result), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",  # random encoders: nothing to download
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    log.write(f"\n=== {part.name} (limit {timeout:.0f} s): {' '.join(command)}\n")
    log.flush()
    offset = log.tell()
    start = time.perf_counter()
    # Its own process group, so that a timeout ends its children too (the peak-memory and spawned
    # processes); not its own session, so that whatever ends this suite's session ends it as well.
    # preexec_fn is safe here: the suite itself starts no threads.
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent,
                            preexec_fn=os.setpgrp)
    try:
        code = proc.wait(timeout=timeout)
        status = "ok" if code == 0 and result.is_file() else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code, status = proc.wait(), "timeout"
    record = {"status": status, "seconds": time.perf_counter() - start, "returncode": code,
              "command": command, "limit_s": timeout}
    if result.is_file():
        record["result"] = json.loads(result.read_text())
    if status != "ok":
        log.flush()
        with open(log.name, encoding="utf-8", errors="replace") as text:
            text.seek(offset)
            record["log_tail"] = text.read()[-4000:]
    return record


MFU_TARGET, PEAK_RATIO_TARGET = 0.40, 1.10  # issue 15: baseline MFU on an H200; Mirai-E peak / baseline peak


def training(result: dict, datasheet: float | None, matmul: float | None) -> dict:
    """Step time, model FLOP/s, MFU and peak memory per variant of a ``foresight_overhead.py`` JSON."""
    batch, flops = result["settings"]["batch"], result["flops_per_image"]["executed"]
    peak_key = "cuda_peak_bytes" if result["machine"]["device"].startswith("cuda") else "max_rss_bytes"
    base_mem = result["memory"]["baseline"]
    variants = {}
    for name, times in result["seconds_per_step"].items():
        step = statistics.median(times)
        rate = flops[name] * batch / step
        row = {"step_s": step, "images_per_s": batch / step,
               "step_ratio_to_baseline": result["step_time_ratio_to_baseline"][name],
               "model_flops_per_image": flops[name], "model_flops_per_s": rate,
               "mfu_datasheet": rate / datasheet if datasheet else None,
               "mfu_matmul": rate / matmul if matmul else None}
        if peak_key in result["memory"][name]:
            row["peak_memory_bytes"] = result["memory"][name][peak_key]
            row["peak_ratio_to_baseline"] = row["peak_memory_bytes"] / base_mem[peak_key]
        variants[name] = row
    derived = {"batch": batch, "bf16": result["settings"]["bf16"], "compile": result["settings"]["compile"],
               "peak_memory": peak_key, "variants": variants}
    mfu = variants["baseline"]["mfu_datasheet"]
    if mfu is not None:
        derived["baseline_mfu_target_met"] = mfu >= MFU_TARGET
    if "peak_ratio_to_baseline" in variants.get("mirai_e", {}):
        derived["mirai_e_peak_ratio_target_met"] = variants["mirai_e"]["peak_ratio_to_baseline"] <= PEAK_RATIO_TARGET
    return derived


def derive(parts: dict) -> dict:
    """The numbers issue 15 asks for, from the parts that produced JSON (others are left out)."""
    results = {name: record["result"] for name, record in parts.items() if "result" in record}
    gpu = next((r["machine"]["gpu"] for r in results.values() if r.get("machine", {}).get("gpu")), None)
    datasheet = C.bf16_peak_flops(gpu) if gpu else None
    matmul = results.get("matmul", {}).get("flops_per_s")
    derived: dict = {"limits": {"gpu": gpu, "bf16_datasheet_flops_per_s": datasheet, "matmul_flops_per_s": matmul,
                                "matmul_dtype": results.get("matmul", {}).get("dtype")},
                     "targets": {"baseline_mfu": MFU_TARGET, "mirai_e_peak_ratio": PEAK_RATIO_TARGET}}
    for name in ("overhead_eager", "overhead_compiled"):
        if name in results:
            derived[name] = training(results[name], datasheet, matmul)
    sampling = {}
    for name, r in results.items():
        if name.startswith("decode_"):
            sampling[f"batch_{r['settings']['batch']}"] = {
                "eager_tokens_per_s": r["tokens_per_s"]["eager"],
                "compiled_tokens_per_s": r["tokens_per_s"]["compiled"],
                "compiled_speedup": r["speedup_compiled_over_eager"], "compile_seconds": r["compile_seconds"],
                "dtype": r["settings"]["dtype"]}
    if sampling:
        derived["sampling"] = sampling
    if "fsdp_vs_ddp" in results:
        r = results["fsdp_vs_ddp"]
        derived["fsdp_vs_ddp"] = {
            "variants": {name: {"step_s": statistics.median(s) / r["settings"]["steps"],
                                "peak_memory_bytes": r["peak_memory_bytes"][name]} for name, s in r["seconds"].items()},
            "steps_per_s_ratios": r["median_ratios"]}
    return derived


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summary(suite: dict) -> str:
    """``summary.md``: the parts' status and the derived numbers as Markdown tables."""
    d, MiB = suite.get("derived", {}), 2**20
    limits = d.get("limits", {})
    lines = [f"# GPU suite{' (smoke, CPU)' if suite['smoke'] else ''}", ""]
    lines += [f"{i}. {run.get('started')}: `{run.get('command')}`" for i, run in enumerate(suite["runs"], 1)]
    lines += ["", "| part | status | wall s | run |", "|---|---|---|---|"]
    for name, r in suite["parts"].items():
        lines.append(f"| {name} | {r['status']}{': ' + r['reason'] if 'reason' in r else ''} | "
                     f"{r.get('seconds', 0):.0f} | {r.get('run', '-')} |")
    gflops = [f"{limits[k] / 1e12:.1f} TFLOP/s" if limits.get(k) else "-"
              for k in ("bf16_datasheet_flops_per_s", "matmul_flops_per_s")]
    dtype = (limits.get("matmul_dtype") or "").removeprefix("torch.")
    lines += ["", (f"Device: {limits.get('gpu') or 'CPU'}; peak: datasheet bf16 {gflops[0]}, measured "
                   f"{dtype + ' ' if dtype else ''}matmul {gflops[1]}.")]
    for name in ("overhead_eager", "overhead_compiled"):
        if name not in d:
            continue
        t = d[name]
        lines += ["", (f"## Training step, {'compiled' if t['compile'] else 'eager'}, batch {t['batch']}, "
                       f"{'bf16' if t['bf16'] else 'fp32'} (peak memory: {t['peak_memory']})"), "",
                  ("| variant | step ms | images/s | step ratio | model TFLOP/s | MFU datasheet | MFU matmul "
                   "| peak MiB | peak ratio |"), "|---|---|---|---|---|---|---|---|---|"]
        for v, row in t["variants"].items():
            peak = row.get("peak_memory_bytes")
            memory = "- | -" if peak is None else f"{peak / MiB:.0f} | {row['peak_ratio_to_baseline']:.3f}"
            lines.append(f"| {v} | {1e3 * row['step_s']:.1f} | {row['images_per_s']:.0f} | "
                         f"{row['step_ratio_to_baseline']:.3f} | {row['model_flops_per_s'] / 1e12:.2f} | "
                         f"{_pct(row['mfu_datasheet'])} | {_pct(row['mfu_matmul'])} | {memory} |")
        for key, text in (("baseline_mfu_target_met", f"baseline MFU >= {MFU_TARGET:.0%}"),
                          ("mirai_e_peak_ratio_target_met", f"Mirai-E peak <= {PEAK_RATIO_TARGET} x baseline")):
            if key in t:
                lines += ["", f"Target {text}: {'met' if t[key] else 'NOT met'}."]
    if "sampling" in d:
        lines += ["", "## Sampling (KV cache, cfg 2.0)", "",
                  "| batch | dtype | eager tok/s | compiled tok/s | speed-up | compile s |",
                  "|---|---|---|---|---|---|"]
        for key, s in d["sampling"].items():
            lines.append(f"| {key.removeprefix('batch_')} | {s['dtype']} | {s['eager_tokens_per_s']:.0f} | "
                         f"{s['compiled_tokens_per_s']:.0f} | {s['compiled_speedup']:.2f} | "
                         f"{s['compile_seconds']:.0f} |")
    if "fsdp_vs_ddp" in d:
        f = d["fsdp_vs_ddp"]
        lines += ["", "## FSDP2 against DDP", "", "| variant | step ms | peak MiB |", "|---|---|---|"]
        lines += [f"| {v} | {1e3 * r['step_s']:.1f} | {r['peak_memory_bytes'] / MiB:.0f} |"
                  for v, r in f["variants"].items()]
        lines += [""] + [f"steps/s ratio {k}: {v:.3f}" for k, v in f["steps_per_s_ratios"].items()]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def _budget(text: str) -> float:
    """``--budget``: seconds, a finite number above 0 (argparse reports anything else against the flag)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds > 0 (e.g. 420)")
    return value


def _only(text: str) -> list[str]:
    """``--only``: one or more part names, comma-separated."""
    names = [p.name for p in PARTS]
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if not chosen or unknown:
        what = f"unknown part {', '.join(unknown)}" if unknown else "no part named"
        raise argparse.ArgumentTypeError(f"{text!r}: {what}; give a comma list of one or more of {', '.join(names)}")
    return chosen


def out_problem(out: Path) -> str | None:
    """Why the folder ``out`` cannot hold the results (naming the fix), or None; creates nothing."""
    if out.exists() and not out.is_dir():
        return f"{out} is a file: give a folder (new or existing) for the results"
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"{out} lies under the file {existing}: give a folder path outside it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{out} cannot be written ({existing} is not writable): give a folder you can write to"
    return None


def previous_suite(path: Path, smoke: bool) -> dict | None:
    """The record in ``path`` (DIR/suite.json) that this run merges into, or None when there is none.

    Raises ValueError, naming the file and the fix, when it is not a readable gpu_suite record or holds
    the other mode (a --smoke record and a CUDA record do not mix)."""
    if not path.exists():
        return None
    fix = "give another --out, or delete the file to start afresh"
    try:
        suite = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}): {fix}") from error
    if not (isinstance(suite, dict) and suite.get("suite") == "gpu_suite" and isinstance(suite.get("smoke"), bool)
            and isinstance(suite.get("parts"), dict) and isinstance(suite.get("runs", []), list)
            and all(isinstance(r, dict) and "status" in r for r in suite["parts"].values())):
        raise ValueError(f"{path} is not a gpu_suite record: {fix}")
    if suite["smoke"] != smoke:
        modes = ("a --smoke", "a CUDA") if suite["smoke"] else ("a CUDA", "a --smoke")
        raise ValueError(f"{path} holds {modes[0]} record and this is {modes[1]} run, which do not mix: {fix}")
    return suite


ORDER = {p.name: i for i, p in enumerate(PARTS)}


def merge(parts: dict, name: str, record: dict) -> dict:
    """``parts`` with this run's ``record`` of part ``name``, in PARTS order; the same dict, unchanged, when
    the part was skipped now and ``parts`` holds an earlier result of it (a rerun short of budget keeps it)."""
    earlier = parts.get(name)
    if record["status"] == "skipped" and earlier is not None and earlier["status"] != "skipped":
        return parts
    return dict(sorted({**parts, name: record}.items(), key=lambda item: ORDER.get(item[0], len(ORDER))))


def _matmul_part(argv: list[str]) -> int:
    """The ``matmul`` part's own process, started by ``run_part``."""
    parser = argparse.ArgumentParser(prog="gpu_suite.py --matmul-json")
    parser.add_argument("--matmul-json", type=Path, required=True)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    args = parser.parse_args(argv)
    measure_matmul(args.matmul_json, args.matmul_size, torch.device(args.device))
    return 0


def main(argv: list[str] | None = None) -> int:
    script = sys.argv[0] if argv is None else __file__  # for the record of the command
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--matmul-json"]:
        return _matmul_part(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for suite.json, summary.md, suite.log (made if missing; a rerun merges)")
    parser.add_argument("--smoke", action="store_true", help="the same parts on a CPU with tiny sizes")
    parser.add_argument("--budget", type=_budget, metavar="SECONDS",
                        help="wall-clock seconds for all parts, > 0 (default 420; 300 with --smoke)")
    parser.add_argument("--only", type=_only, metavar="PART,...",
                        help=f"run only these parts: a comma list from {', '.join(ORDER)}")
    args = parser.parse_args(argv)
    # Every argument is checked before the CUDA check, so that a mistake is reported as itself.
    if problem := out_problem(args.out):
        parser.error(f"--out: {problem}")
    try:
        previous = previous_suite(args.out / "suite.json", args.smoke)
    except ValueError as error:
        parser.error(f"--out: {error}")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device is visible to PyTorch: run this on a GPU, or add --smoke for the CPU smoke run")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out: cannot create {args.out} ({error.strerror}): give a folder you can write to")
    chosen = [p for p in PARTS if p.name in (args.only or ORDER)]
    budget = args.budget or (300 if args.smoke else 420)
    deadline = time.perf_counter() + budget
    # A record written before "runs" existed holds one run's fields at its top level.
    runs = (previous.get("runs") or [{**{k: previous.get(k) for k in ("started", "command", "budget_s")},
                                      "parts": list(previous["parts"])}]) if previous else []
    command = shlex.join([Path(sys.executable).name, script, *argv])
    run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "budget_s": budget,
           "parts": [p.name for p in chosen]}
    suite = {"suite": "gpu_suite", "smoke": args.smoke, "runs": [*runs, run],
             "parts": dict(previous["parts"]) if previous else {}}
    now: dict[str, dict] = {}  # this run's records, for the exit status
    with tempfile.TemporaryDirectory() as tmp, open(args.out / "suite.log", "a") as log:
        log.write(f"\n##### run {len(suite['runs'])}, {run['started']}: {run['command']}\n")
        for part in chosen:
            left = deadline - time.perf_counter()
            if args.smoke and isinstance(part.smoke, str):
                record = {"status": "skipped", "reason": f"not run with --smoke: {part.smoke}"}
            elif left < part.min_s:
                record = {"status": "skipped", "reason": f"{left:.0f} s left of the {budget:.0f} s budget"}
            else:
                timeout = left if args.smoke else min(part.cap_s, left)
                print(f"[{time.strftime('%H:%M:%S')}] {part.name}: running (limit {timeout:.0f} s)", flush=True)
                record = run_part(part, args, Path(tmp), log, timeout)
            record["run"] = len(suite["runs"])
            now[part.name] = record
            parts = merge(suite["parts"], part.name, record)
            kept = "; its earlier record is kept" if parts is suite["parts"] else ""
            suite["parts"] = parts
            print(f"[{time.strftime('%H:%M:%S')}] {part.name}: {record['status']}"
                  + (f" in {record['seconds']:.0f} s" if "seconds" in record else f" ({record['reason']})") + kept,
                  flush=True)
            try:  # a part whose JSON lacks a field must not cost the others' results
                suite["derived"] = derive(suite["parts"])
                report = summary(suite)
                suite.pop("derived_error", None)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
                report = None
                suite.pop("derived", None)
                suite["derived_error"] = f"{type(error).__name__}: {error} (after part {part.name})"
            write_atomic(args.out / "suite.json", json.dumps(suite, indent=2, default=str) + "\n")
            write_atomic(args.out / "summary.md", report or f"derived numbers failed: {suite['derived_error']}\n")
    print(report or suite.get("derived_error"))
    failed = any(r["status"] in ("failed", "timeout") for r in now.values()) or "derived_error" in suite
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
