"""Run every benchmark in turn (``make bench``); each writes benchmarks/results/NAME.json.

    .venv/bin/python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--threads N] [--only NAME,...]

``--quick``, ``--device`` and ``--threads`` are passed to every script. A failing script
does not stop the others; the exit status is 1 if any failed. Results and the commands
used for the committed numbers are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["sampling_kv_cache", "par_sampling", "foresight_overhead", "train_throughput"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--only", help=f"comma list from {', '.join(SCRIPTS)}")
    args = parser.parse_args()
    chosen = SCRIPTS if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = sorted(set(chosen) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {SCRIPTS}")
    passthrough = ["--device", args.device] + (["--quick"] if args.quick else [])
    passthrough += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}  # random encoders only
    status = {}
    for name in chosen:
        command = [sys.executable, str(HERE / f"{name}.py"), *passthrough]
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, env=env)
        status[name] = (code, time.perf_counter() - start)
    print("\n=== summary")
    for name, (code, seconds) in status.items():
        print(f"{name:22s} {'ok' if code == 0 else f'FAILED (exit {code})':18s} {seconds:7.1f} s")
    return int(any(code != 0 for code, _ in status.values()))


if __name__ == "__main__":
    sys.exit(main())
