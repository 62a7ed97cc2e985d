"""DDP and FSDP2 scaling from 1 to 2 processes on CPU (gloo): training steps/s of a tiny GPT.

    .venv/bin/python benchmarks/ddp_fsdp_scaling.py [--quick] [--model GPT-Micro] [--batch 32]

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

``--quick``: 2 rounds of 3 steps.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _common as C
from mirai.models import build_gpt
from mirai.models.ema import update_ema
from mirai.training.config import DistributedConfig
from mirai.training.distributed import DistInfo, wrap_for_training
from mirai.training.trainer import Objective, param_groups

VARIANTS = {"1 process": (1, "ddp"), "2 x DDP": (2, "ddp"), "2 x FSDP2": (2, "fsdp")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, strategy: str, opts: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(opts["threads"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        gpt = build_gpt(opts["model"], vocab_size=opts["vocab"], grid_size=opts["grid"], num_classes=10)
        ema = build_gpt(opts["model"], vocab_size=opts["vocab"], grid_size=opts["grid"], num_classes=10)
        ema.load_state_dict(gpt.state_dict())
        ema.requires_grad_(False)
        objective = Objective(gpt, None)
        info = DistInfo(rank=rank, world_size=world)
        step_fn = wrap_for_training(objective, gpt, [ema], DistributedConfig(strategy=strategy), info,
                                    find_unused=False)
        optimizer = torch.optim.AdamW(param_groups(objective, 0.05), lr=1e-4, betas=(0.9, 0.95), foreach=True)
        per_rank = opts["batch"] // world
        generator = torch.Generator().manual_seed(rank)
        tokens = torch.randint(0, opts["vocab"], (per_rank, opts["grid"] ** 2), generator=generator)
        batch = {"tokens": tokens, "labels": torch.randint(0, 10, (per_rank,), generator=generator)}

        def step() -> None:
            loss, _ = step_fn(batch, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update_ema(ema, gpt, 0.9999)

        for _ in range(opts["warmup"]):
            step()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(opts["steps"]):
            step()
        dist.barrier()
        if rank == 0:
            Path(out).write_text(str(time.perf_counter() - start))
    finally:
        dist.destroy_process_group()


def run_variant(name: str, opts: dict) -> float:
    """Seconds for ``opts["steps"]`` steps of variant ``name`` (timed on rank 0)."""
    world, strategy = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        mp.start_processes(_worker, args=(world, _free_port(), strategy, opts, str(out)), nprocs=world,
                           start_method="spawn")
        return float(out.read_text())


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.set_defaults(threads=1)
    parser.add_argument("--model", default="GPT-Micro")
    parser.add_argument("--grid", type=int, default=8, help="tokens per side")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences), split over the processes")
    parser.add_argument("--steps", type=int, help="timed steps per call (default 20, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.device != "cpu":
        sys.exit("this benchmark measures gloo on CPU; --device cuda is not supported")
    device = C.setup(args)
    C.warn_if_busy(2 * args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    opts = dict(model=args.model, grid=args.grid, vocab=args.vocab, batch=args.batch, threads=args.threads,
                steps=args.steps or (3 if args.quick else 20), warmup=args.warmup)
    variants = {name: (lambda name=name: run_variant(name, opts)) for name in VARIANTS}
    _, seconds = C.interleaved(variants, repeats, warmup=0)
    rate = {name: [opts["steps"] / s for s in values] for name, values in seconds.items()}
    ratios = {
        "ddp_2_over_1": [a / b for a, b in zip(rate["2 x DDP"], rate["1 process"])],
        "fsdp_2_over_1": [a / b for a, b in zip(rate["2 x FSDP2"], rate["1 process"])],
        "fsdp_over_ddp": [a / b for a, b in zip(rate["2 x FSDP2"], rate["2 x DDP"])],
    }
    C.print_table(["variant", "median steps/s", "range"],
                  [[name, C.median(r), C.spread(r)] for name, r in rate.items()])
    for key, values in ratios.items():
        print(f"{key}: median {C.median(values):.3f} (per round {', '.join(f'{v:.3f}' for v in values)})")
    C.write_json("ddp_fsdp_scaling", {
        "settings": opts, "machine": C.machine(device), "seconds": seconds, "steps_per_s": rate,
        "ratios": ratios, "median_ratios": {k: C.median(v) for k, v in ratios.items()},
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
