"""CPU training step against the machine's limit: model FLOPs per second / the fp32 matmul rate, in one run.

    .venv/bin/python benchmarks/train_mfu.py [--quick] [--threads 1]
    .venv/bin/python benchmarks/train_mfu.py --models GPT-Micro,GPT-Mini --grid 8 --batch 32

For each model, one training step as ``mirai.training.trainer.Trainer.train_step`` runs it with the
project's defaults on a CPU (fp32, dropout on, AdamW with weight decay on matrices, gradient
clipping at 1, the EMA update), on random 8x8-token batches of 32 images (the Fashion-MNIST vq8
shape: 512 codes, 10 classes). ``eager`` runs the ``Objective`` as it is; ``compiled`` after
``Objective.compile()``, as ``compile: true`` does (compiled in the untimed warm-up).

Model FLOPs per step: 3 x 2 x the multiply-adds of one forward over the batch, counted with
``mirai.analysis.flops.gpt_macs`` over every Linear and the output layer plus the attention-score
products QK^T and AV (the full square), without the embedding lookups (no matmul runs there):
6 x (non-embedding parameters) x tokens + attention. The limit is the rate of ``torch.mm`` of two
``--mm-size`` square fp32 matrices measured in the same process, interleaved with the steps, so
that both see the same load. MFU per round = (FLOPs / step time) / (matmul FLOPs / matmul time);
the median over rounds is reported.

``--llamagen DIR`` adds LlamaGen's own step, from a clone of github.com/FoundationVision/LlamaGen
at ``DIR``: its ``Transformer`` (``autoregressive/models/gpt.py``) built with the same ``ModelArgs``
fields, called as ``autoregressive/train/train_c2i.py`` calls it, with that script's defaults: fused
AdamW (its ``creat_optimizer`` asks for ``fused=True`` wherever torch has it, the CPU included), no
EMA (``--ema`` is off), clipping at 1; ``llamagen`` eager (``--no-compile``), ``llamagen-compiled``
under ``torch.compile`` (its default); and ``compiled-as-llamagen``: the project's compiled step with
those two defaults of LlamaGen's. Each round then also gives LlamaGen's step time over ours.

``--quick``: GPT-Micro only, 2 rounds.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import fields
from pathlib import Path

import torch

import _common as C
from mirai.analysis.flops import FLOPS_PER_MAC, TRAIN_FACTOR, Convention, gpt_macs
from mirai.foresight.base import Progress
from mirai.models import build_gpt
from mirai.models.gpt import GPTArgs
from mirai.models.ema import update_ema
from mirai.training.optim import adamw_kernel, param_groups
from mirai.training.objective import Objective


def random_batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (batch, grid**2), labels (batch,)) drawn uniformly."""
    return (torch.randint(0, args.vocab, (args.batch, args.grid**2), device=device),
            torch.randint(0, args.classes, (args.batch,), device=device))


def optimizer_step(module: torch.nn.Module, loss_fn, kernel: dict, ema: tuple | None = None):
    """A closure: backward of ``loss_fn()``, clipping at 1, AdamW (decay 0.05 on matrices, LlamaGen's betas)
    with the ``kernel`` flags, then the EMA update of ``ema = (ema_model, model)`` if given."""
    optimizer = torch.optim.AdamW(param_groups(module, 0.05), lr=1e-4, betas=(0.9, 0.95), **kernel)

    def step() -> None:
        module.train()
        loss_fn().backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            update_ema(*ema, 0.9999)

    return step


def training_step(model_name: str, args, compiled: bool, device: torch.device, as_llamagen: bool = False):
    """A closure running one training step (what ``Trainer.train_step`` does for the baseline).
    ``as_llamagen``: with train_c2i.py's defaults instead of the project's (fused AdamW, no EMA)."""
    torch.manual_seed(0)
    gpt = build_gpt(model_name, vocab_size=args.vocab, grid_size=args.grid, num_classes=args.classes).to(device)
    ema = copy.deepcopy(gpt).eval().requires_grad_(False)
    objective = Objective(gpt, None)
    if compiled:
        objective.compile()
    tokens, labels = random_batch(args, device)
    progress = Progress(step=0, epoch=0.0, fraction=0.0)

    def loss() -> torch.Tensor:
        return objective({"tokens": tokens, "labels": labels}, progress)[0]

    if as_llamagen:
        return gpt, optimizer_step(objective, loss, {"fused": True})
    return gpt, optimizer_step(objective, loss, adamw_kernel(device), ema=(ema, gpt))


def llamagen_step(repo: Path, ours: GPTArgs, args, compiled: bool, device: torch.device):
    """LlamaGen's own training step (``repo`` is a LlamaGen clone) for a model of ``ours`` shape, as its
    train_c2i.py runs it: (its parameter count, the closure)."""
    if not all((repo / f).is_file() for f in ("autoregressive/models/gpt.py", "utils/drop_path.py")):
        raise SystemExit(f"--llamagen {repo}: no autoregressive/models/gpt.py and utils/drop_path.py there; "
                         "give the root of a LlamaGen clone")
    sys.path.insert(0, str(repo))
    try:
        from autoregressive.models.gpt import ModelArgs, Transformer
    finally:
        sys.path.remove(str(repo))

    torch.manual_seed(0)
    shared = {f.name: getattr(ours, f.name) for f in fields(ModelArgs) if hasattr(ours, f.name)}
    model = Transformer(ModelArgs(**shared, block_size=args.grid**2)).to(device)
    forward = torch.compile(model) if compiled else model
    tokens, labels = random_batch(args, device)

    def loss() -> torch.Tensor:
        return forward(idx=tokens[:, :-1], cond_idx=labels, targets=tokens)[1]

    return sum(p.numel() for p in model.parameters()), optimizer_step(model, loss, {"fused": True})


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--models", help="comma list (default GPT-Micro,GPT-Mini; GPT-Micro with --quick)")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    parser.add_argument("--llamagen", type=Path, help="root of a LlamaGen clone: also time LlamaGen's own step")
    parser.add_argument("--mm-size", type=int, default=1024, help="side of the square matrices of the limit")
    args = parser.parse_args()
    device = C.setup(args)
    C.warn_if_busy(args.threads)
    models = [m.strip() for m in (args.models or ("GPT-Micro" if args.quick else "GPT-Micro,GPT-Mini")).split(",")]
    repeats = args.repeats or (2 if args.quick else 5)
    n = args.mm_size
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    mm_calls = 10
    mm_flops = 2 * n**3 * mm_calls

    def matmul() -> None:
        for _ in range(mm_calls):
            torch.mm(a, b)

    report, rows = {}, []
    for model in models:
        variants, steps = {"matmul": matmul}, {}
        for mode in ("eager", "compiled"):
            gpt, steps[mode] = training_step(model, args, mode == "compiled", device)
        params = sum(p.numel() for p in gpt.parameters())
        if args.llamagen:
            _, steps["compiled-as-llamagen"] = training_step(model, args, True, device, as_llamagen=True)
            for mode in ("llamagen", "llamagen-compiled"):
                theirs, steps[mode] = llamagen_step(args.llamagen, gpt.args, args, mode.endswith("compiled"), device)
                if theirs != params:  # the FLOP count below is our model's
                    raise SystemExit(f"LlamaGen's {model} has {theirs} parameters, ours {params}: the shapes differ, "
                                     "so our FLOP count would not fit it; use a LlamaGen clone whose ModelArgs "
                                     "match (RESULTS.md §7 used commit ce98ec4)")
        macs = gpt_macs(gpt.args, conv=Convention(embedding=False, attention_scores=True))
        flops = TRAIN_FACTOR * FLOPS_PER_MAC * macs * args.batch * args.steps
        for mode, step in steps.items():
            def call(step=step) -> None:
                for _ in range(args.steps):
                    step()
            variants[mode] = call
        times, _ = C.interleaved(variants, repeats=repeats, warmup=1, device=device)
        limit = [mm_flops / t for t in times["matmul"]]
        mfu = {mode: [flops / t / lim for t, lim in zip(times[mode], limit)] for mode in steps}
        report[model] = {"parameters": params, "flops_per_call": flops, "matmul_flops_per_s": limit,
                         "seconds_per_call": times, "mfu_per_round": mfu,
                         "mfu": {m: C.median(v) for m, v in mfu.items()}}
        # per round, LlamaGen's default (compiled) step time over this mode's (> 1: faster than LlamaGen's)
        speedup = {mode: C.round_ratios(times, "llamagen-compiled", mode) for mode in steps} if args.llamagen else {}
        report[model]["speedup_over_llamagen"] = speedup
        for mode in steps:
            rows.append([model, mode, f"{params / 1e6:.2f} M", flops / C.median(times[mode]) / 1e9,
                         C.median(limit) / 1e9, C.median(mfu[mode]), C.spread(mfu[mode]),
                         C.median(speedup[mode]) if speedup else "-"])
    print(f"{args.grid}x{args.grid} tokens, V={args.vocab}, batch {args.batch}, {args.steps} steps per call, "
          f"{device}, {args.threads} threads, {repeats} rounds, limit: torch.mm {n}x{n} fp32")
    C.print_table(["model", "mode", "params", "model GFLOP/s", "matmul GFLOP/s", "MFU", "round range",
                   "x LlamaGen (compiled)"], rows)
    C.write_json("train_mfu", {
        "benchmark": "train_mfu", "machine": C.machine(device),
        "settings": {"models": models, "grid": args.grid, "vocab": args.vocab, "classes": args.classes,
                     "batch": args.batch, "steps": args.steps, "mm_size": n, "repeats": repeats,
                     "quick": args.quick, "llamagen": str(args.llamagen) if args.llamagen else None},
        "results": report,
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
