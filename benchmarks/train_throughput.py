"""Training throughput (images/s) of the real trainer on Fashion-MNIST codes: baseline vs Mirai-I vs Mirai-E.

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--device cpu|cuda]

For each model (default GPT-Micro and GPT-Mini), one ``mirai.training.trainer.Trainer`` per
variant is built from ``configs/fashion/baseline.yaml`` with overrides:

* ``baseline``: the config as it is (next-token prediction only);
* ``mirai_i``: ``foresight.source=encoder foresight.encoder=fashion8`` (the committed
  Fashion-MNIST encoder; each step renders the exact crop/flip views and runs the encoder);
* ``mirai_e``: ``foresight.source=ema foresight.warmup=0`` (the default 15-epoch NTP-only
  warm-up would leave the foresight loss off during the benchmark);
* ``mirai_i_cached`` (only with ``--with-cached``): ``mirai_i`` plus
  ``foresight.cache_features=true`` (encoder run once over every stored view when the trainer
  is built: that set-up time is reported separately, not in the throughput).

and ``data.codes`` (absolute), ``data.val_codes=null``, ``run_dir`` under /tmp, no
evaluation, sampling or checkpoints. ``Trainer.train_step`` is called directly: a timed call
is ``--steps`` optimizer steps, including batch assembly from the code store. Variants
alternate in order, round after round; each round gives a throughput ratio
variant/baseline (= baseline time / variant time), and the median over rounds is reported.

The code store ``runs/codes/fashion-vq8-train`` must exist (``--codes`` to point elsewhere);
when it is missing the script prints the ``mirai extract`` command that makes it.

``--quick``: GPT-Micro only, 2 steps per call, 2 rounds.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common as C
from mirai.analysis.flops import training_flops
from mirai.config import load_config
from mirai.training.config import TrainConfig
from mirai.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "fashion" / "baseline.yaml"
DEFAULT_CODES = REPO / "runs" / "codes" / "fashion-vq8-train"
VARIANTS = {
    "baseline": [],
    "mirai_i": ["foresight.source=encoder", "foresight.encoder=fashion8"],
    "mirai_e": ["foresight.source=ema", "foresight.warmup=0"],
    "mirai_i_cached": ["foresight.source=encoder", "foresight.encoder=fashion8", "foresight.cache_features=true"],
}


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--models", help="comma list (default GPT-Micro,GPT-Mini; GPT-Micro with --quick)")
    parser.add_argument("--codes", type=Path, default=DEFAULT_CODES, help="training code store")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--batch", type=int, help="optim.batch_size (default: the config's, 64)")
    parser.add_argument("--steps", type=int, help="optimizer steps per timed call (default 5; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant")
    parser.add_argument("--with-cached", action="store_true", help="also Mirai-I with foresight.cache_features")
    parser.add_argument("--compile", action="store_true", help="compile=true (the trainer compiles the GPT)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = parser.parse_args()
    device = C.setup(args)
    C.warn_if_busy(args.threads)
    if not (args.codes / "manifest.json").exists():
        sys.exit(
            f"no code store at {args.codes}; make it first (about a minute) with\n"
            f"  mirai extract --tokenizer src/mirai/assets/fashion/vq8 --dataset fashion-mnist --split train "
            f"--out {args.codes}"
        )
    models = [m.strip() for m in (args.models or ("GPT-Micro" if args.quick else "GPT-Micro,GPT-Mini")).split(",")]
    steps = args.steps or (2 if args.quick else 5)
    repeats = args.repeats or (2 if args.quick else 3)
    names = ["baseline", "mirai_i", "mirai_e"] + (["mirai_i_cached"] if args.with_cached else [])
    run_root = Path(tempfile.mkdtemp(prefix="mirai-bench-throughput-"))

    report: dict[str, dict] = {}
    try:
        for model in models:
            trainers: dict[str, Trainer] = {}
            setup_s: dict[str, float] = {}
            for name in names:
                overrides = [
                    f"run_dir={run_root / f'{model}-{name}'}", f"device={args.device}", f"model.name={model}",
                    f"data.codes={args.codes.resolve()}", "data.val_codes=null", "steps=1000000",
                    "eval_every=0", "sample_every=0", "save_every=0", "log_every=1000000",
                    f"compile={str(args.compile).lower()}",
                    *([f"optim.batch_size={args.batch}"] if args.batch else []), *VARIANTS[name], *args.set,
                ]
                start = time.perf_counter()
                trainers[name] = Trainer(load_config(TrainConfig, args.config, overrides))
                setup_s[name] = time.perf_counter() - start
            batch = trainers["baseline"].cfg.optim.batch_size

            def call(trainer: Trainer):
                def run() -> dict:
                    logs = {}
                    for _ in range(steps):
                        logs = trainer.train_step()
                    return logs
                return run

            times, results = C.interleaved({n: call(t) for n, t in trainers.items()}, repeats=repeats,
                                           warmup=args.warmup, device=device)
            for name in names:
                if name != "baseline" and "loss/foresight" not in results[name][-1]:
                    raise RuntimeError(f"{model} {name}: the foresight loss did not run")
            throughput_ratio = {n: C.median(C.round_ratios(times, "baseline", n)) for n in names}
            flops = {}
            for n, t in trainers.items():
                aux = t.objective.auxiliary
                width = getattr(getattr(aux, "source", None), "feature_dim", None)
                flops[n] = training_flops(t.gpt.args, t.cfg.foresight, target_dim=width)["total"]
            report[model] = {
                "parameters": sum(p.numel() for p in trainers["baseline"].gpt.parameters()),
                "batch_size": batch,
                "grid_size": trainers["baseline"].data.grid_size,
                "seconds_per_call": times,
                "images_per_s": {n: batch * steps / C.median(t) for n, t in times.items()},
                "throughput_ratio_to_baseline": throughput_ratio,
                "throughput_ratio_per_round": {n: C.round_ratios(times, "baseline", n) for n in names},
                "setup_seconds": setup_s,
                "flops_per_image_without_encoder": flops,
                "flops_ratio_to_baseline": {n: flops[n] / flops["baseline"] for n in names},
                "final_logs": {n: results[n][-1] for n in names},
            }
            del trainers
            gc.collect()
    finally:
        shutil.rmtree(run_root, ignore_errors=True)

    print(f"Fashion-MNIST codes {args.codes.name}, {device}, {args.threads} threads, {steps} steps per call, "
          f"{repeats} rounds")
    rows = []
    for model, r in report.items():
        for n in names:
            rows.append([model, n, r["batch_size"], r["images_per_s"][n], r["throughput_ratio_to_baseline"][n],
                         C.spread(r["throughput_ratio_per_round"][n]), 1 / r["flops_ratio_to_baseline"][n],
                         f"{r['setup_seconds'][n]:.1f}"])
    C.print_table(["model", "variant", "batch", "images/s", "ratio", "round range", "1/FLOPs ratio", "setup s"],
                  rows)
    print("ratio: images/s relative to the baseline of the same model, median of per-round ratios; "
          "1/FLOPs ratio: the ratio analytic per-image training FLOPs predict (mirai.analysis.flops, Table 15 "
          "convention; the Mirai-I encoder forward is not counted)")

    C.write_json("train_throughput", {
        "benchmark": "train_throughput",
        "machine": C.machine(device),
        "settings": {"config": str(args.config), "codes": str(args.codes), "models": models, "steps": steps,
                     "repeats": repeats, "warmup": args.warmup, "compile": args.compile, "quick": args.quick,
                     "threads": args.threads, "variants": {n: VARIANTS[n] for n in names}, "extra": args.set},
        "results": report,
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
