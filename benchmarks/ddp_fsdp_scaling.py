"""DDP and FSDP2 scaling from 1 to 2 processes on CPU (gloo): training steps/s of a tiny GPT.

    .venv/bin/python benchmarks/ddp_fsdp_scaling.py [--quick] [--model GPT-Micro] [--batch 32]
    python benchmarks/ddp_fsdp_scaling.py --device cuda --model GPT-B --grid 16 --vocab 16384   # one GPU, nccl

Three variants at the same global batch (``--batch`` sequences of ``--grid``² tokens):

* ``1 process``: the objective unwrapped (what the trainer runs without ``torchrun``);
* ``2 x DDP``: 2 gloo processes, half the batch each (``distributed.strategy=ddp``);
* ``2 x FSDP2``: 2 gloo processes, half the batch each, every block and the root sharded, the
  EMA sharded the same way (``distributed.strategy=fsdp``, fp32 compute on CPU).

A step is what ``Trainer.train_step`` does with the trainer's own pieces (``Objective``,
``wrap_for_training``, AdamW, gradient clipping, ``update_ema``) on random tokens: no data
loading, no foresight. Each timed call spawns the variant's processes, runs ``--warmup`` steps,
then times ``--steps`` steps on rank 0 between two barriers (process start-up is not timed).
Variants alternate in order round after round; each round gives the ratios 2-process/1-process
steps/s for both strategies and FSDP2/DDP, and the median over rounds is reported. Each process
uses ``--threads`` threads (default 1: on a 2-core machine, 2 processes then fill it).

``--variants`` picks others: ``1 x DDP`` and ``1 x FSDP2`` wrap the objective in one process
(which the trainer leaves unwrapped), so that the wrappers' own cost shows; they are the default
with ``--device cuda`` (nccl, one process per GPU, bf16 autocast as the trainer; FSDP2 blocks
compute in bf16). Each variant also reports its peak memory over the timed steps: on CUDA
``torch.cuda.max_memory_allocated`` of rank 0, on CPU rank 0's peak resident set (``VmHWM``).

``--quick``: 2 rounds of 3 steps.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import _common as C
from mirai.models import build_gpt
from mirai.models.ema import update_ema
from mirai.training.config import DistributedConfig
from mirai.training.distributed import DistInfo, wrap_for_training
from mirai.training.fsdp import shard_training
from mirai.training.objective import Objective
from mirai.training.optim import param_groups

VARIANTS = {"1 process": (1, None), "2 x DDP": (2, "ddp"), "2 x FSDP2": (2, "fsdp"),
            "1 x DDP": (1, "ddp"), "1 x FSDP2": (1, "fsdp")}
DEFAULT_VARIANTS = {"cpu": "1 process,2 x DDP,2 x FSDP2", "cuda": "1 x DDP,1 x FSDP2"}
RATIOS = {"ddp_2_over_1": ("2 x DDP", "1 process"), "fsdp_2_over_1": ("2 x FSDP2", "1 process"),
          "fsdp_over_ddp": ("2 x FSDP2", "2 x DDP"), "fsdp_over_ddp_1": ("1 x FSDP2", "1 x DDP")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrap(objective: Objective, gpt, ema, strategy: str | None, info: DistInfo) -> torch.nn.Module:
    """The trainer's wrapper; ``wrap_for_training`` leaves one process unwrapped, so the ``1 x``
    variants wrap it here as it would with more processes."""
    cfg = DistributedConfig(strategy=strategy or "ddp")
    if strategy is None or info.enabled:
        return wrap_for_training(objective, gpt, [ema], cfg, info, find_unused=False)
    if strategy == "fsdp":
        return shard_training(objective, gpt, [ema], cfg, info.device)
    return DistributedDataParallel(objective, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def _worker(rank: int, world: int, port: int, strategy: str | None, opts: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(opts["threads"])
    cuda = opts["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        shape = {"vocab_size": opts["vocab"], "grid_size": opts["grid"], "num_classes": opts["classes"]}
        gpt = build_gpt(opts["model"], **shape).to(device)
        ema = build_gpt(opts["model"], **shape).to(device)
        ema.load_state_dict(gpt.state_dict())
        ema.requires_grad_(False)
        objective = Objective(gpt, None)
        step_fn = _wrap(objective, gpt, ema, strategy, DistInfo(rank=rank, world_size=world, device=device))
        optimizer = torch.optim.AdamW(param_groups(objective, 0.05), lr=1e-4, betas=(0.9, 0.95), foreach=True)
        per_rank = opts["batch"] // world
        generator = torch.Generator().manual_seed(rank)
        tokens = torch.randint(0, opts["vocab"], (per_rank, opts["grid"] ** 2), generator=generator)
        batch = {"tokens": tokens.to(device),
                 "labels": torch.randint(0, opts["classes"], (per_rank,), generator=generator).to(device)}
        # bf16 autocast on CUDA, as the trainer's precision=auto
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

        def step() -> None:
            with autocast:
                loss, _ = step_fn(batch, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update_ema(ema, gpt, 0.9999)

        for _ in range(opts["warmup"]):
            step()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(opts["steps"]):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            peak = torch.cuda.max_memory_allocated(device) if cuda else C.rss_bytes("VmHWM")
            Path(out).write_text(json.dumps({"seconds": seconds, "peak_bytes": peak}))
    finally:
        dist.destroy_process_group()


def run_variant(name: str, opts: dict) -> dict:
    """``seconds`` for ``opts["steps"]`` steps of variant ``name`` and ``peak_bytes`` (rank 0)."""
    world, strategy = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(world, _free_port(), strategy, opts, str(out)), nprocs=world,
                           start_method="spawn")
        return json.loads(out.read_text())


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.set_defaults(threads=1)
    parser.add_argument("--model", default="GPT-Micro")
    parser.add_argument("--grid", type=int, default=8, help="tokens per side")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences), split over the processes")
    parser.add_argument("--steps", type=int, help="timed steps per call (default 20, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--variants", help=f"comma list from {', '.join(VARIANTS)} (default: "
                        f"{DEFAULT_VARIANTS['cpu']!r}; {DEFAULT_VARIANTS['cuda']!r} with --device cuda)")
    args = parser.parse_args()
    names = [v.strip() for v in (args.variants or DEFAULT_VARIANTS[args.device]).split(",") if v.strip()]
    if not names or not set(names) <= set(VARIANTS):
        parser.error(f"--variants: a comma list from {', '.join(VARIANTS)}")
    device = C.setup(args)
    C.warn_if_busy(2 * args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    opts = dict(model=args.model, grid=args.grid, vocab=args.vocab, classes=args.classes, batch=args.batch,
                threads=args.threads, steps=args.steps or (3 if args.quick else 20), warmup=args.warmup,
                device=args.device)
    variants = {name: (lambda name=name: run_variant(name, opts)) for name in names}
    _, results = C.interleaved(variants, repeats, warmup=0)
    seconds = {name: [r["seconds"] for r in values] for name, values in results.items()}
    peaks = {name: max(r["peak_bytes"] for r in values) for name, values in results.items()}
    rate = {name: [opts["steps"] / s for s in values] for name, values in seconds.items()}
    ratios = {key: [a / b for a, b in zip(rate[num], rate[den])]
              for key, (num, den) in RATIOS.items() if num in rate and den in rate}
    C.print_table(["variant", "median steps/s", "range", "peak MiB (rank 0)"],
                  [[name, C.median(r), C.spread(r), f"{peaks[name] / 2**20:.0f}"] for name, r in rate.items()])
    for key, values in ratios.items():
        print(f"{key}: median {C.median(values):.3f} (per round {', '.join(f'{v:.3f}' for v in values)})")
    C.write_json("ddp_fsdp_scaling", {
        "settings": opts, "machine": C.machine(device), "seconds": seconds, "steps_per_s": rate,
        "peak_memory_bytes": peaks,
        "ratios": ratios, "median_ratios": {k: C.median(v) for k, v in ratios.items()},
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
