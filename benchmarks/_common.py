"""Shared helpers of the benchmark scripts: arguments, machine description, interleaved timing, JSON.

Benchmarks report *ratios measured within one run*: the compared variants are run in
alternating order, round after round, and each round gives one ratio; the median over
rounds is reported. Absolute times are printed too, but only the ratios travel between
machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def base_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (small sizes, few repeats)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: per script, fewer with --quick)")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/NAME.json, NAME-quick.json with --quick)")
    return parser


_START: dict = {}


def setup(args: argparse.Namespace) -> torch.device:
    _START.update(time=time.strftime("%Y-%m-%d %H:%M:%S"),
                  loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to PyTorch")
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    """What the numbers were measured on (recorded in every JSON)."""
    info = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "loadavg_at_start": _START.get("loadavg"),  # 1, 5, 15-minute load averages
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": _START.get("time"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity), matched as
# substrings of ``torch.cuda.get_device_name`` in this order (the NVL/PCIe parts before the SXM name).
BF16_PEAK_FLOPS = (
    ("H200 NVL", 835e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
    ("H200", 989.4e12), ("H100", 989.4e12), ("A100", 312e12),
)


def bf16_peak_flops(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU named like ``torch.cuda.get_device_name``; None if unknown."""
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in device_name), None)


def rss_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc (Linux).

    Not ``ru_maxrss``: Linux carries it over from the parent across fork and exec, so a child
    of a large process would report the parent's size as its own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} missing from /proc/self/status")


def warn_if_busy(threads: int) -> None:
    """Other processes on the cores inflate small-op latency (OpenMP threads wait for each other)."""
    if not hasattr(os, "getloadavg"):
        return
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load > 0.5 and load + threads > cores + 0.5:
        print(f"warning: load average {load:.1f} on {cores} cores before starting; with {threads} threads this "
              "run shares the cores with other work, and ratios between variants of different op "
              "granularity are distorted" + (" (try --threads 1, or an idle machine)" if threads > 1 else
                                         " (an idle machine gives cleaner numbers)"), file=sys.stderr)


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | None = None) -> tuple[dict[str, list[float]], dict[str, list[object]]]:
    """Run each variant ``warmup`` times, then ``repeats`` rounds in alternating order.

    Returns (seconds per call, one list per variant in round order) and what each timed
    call returned (same layout). Round r runs the variants forwards when r is even,
    backwards when odd, so slow drifts (thermal, other load) hit every variant alike.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[object]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if device is not None:
                sync(device)
            start = time.perf_counter()
            out = variants[name]()
            if device is not None:
                sync(device)
            times[name].append(time.perf_counter() - start)
            results[name].append(out)
    return times, results


def top_ops(fn: Callable[[], object], rows: int = 10) -> list[dict]:
    """One call of ``fn`` under ``torch.profiler`` (CPU activity): the ``rows`` operators with the most
    self CPU time, as dicts {op, self_ms, calls, share}, share being of all self time in the call.
    The profiler adds per-operator overhead, so shares compare within a call, not against timed rounds.
    CPU time only: on a GPU it would show launch cost, not kernel time. Inductor's per-build graph hash is
    dropped from names (``## Call CompiledFxGraph <hash> ##`` becomes ``CompiledFxGraph``), so that files
    compare. On a machine without CUDA, torch's profiler logs a harmless ``gpuGetDeviceCount failed`` line."""
    import re

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": re.sub(r"^## Call CompiledFxGraph .* ##$", "CompiledFxGraph", e.key),
             "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count,
             "share": e.self_cpu_time_total / total} for e in top]


def median(values: list[float]) -> float:
    return statistics.median(values)


def round_ratios(times: dict[str, list[float]], variant: str, reference: str) -> list[float]:
    """Per-round ratios time(variant) / time(reference)."""
    return [a / b for a, b in zip(times[variant], times[reference])]


def spread(values: list[float]) -> str:
    """``min-max`` of a list, for the table."""
    return f"{min(values):.3g}-{max(values):.3g}" if values else "-"


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c:.4g}" if isinstance(c, float)
                                            else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, payload: dict, out: Path | None = None, quick: bool = False) -> Path:
    """``benchmarks/results/NAME.json`` (``NAME-quick.json`` for --quick runs, so that a smoke run
    never overwrites recorded results), or ``out``."""
    path = out or RESULTS_DIR / f"{name}{'-quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path
