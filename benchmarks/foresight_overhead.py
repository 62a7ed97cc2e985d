"""Training-step time and memory of the baseline, Mirai-I and Mirai-E, as ratios in one run.

    .venv/bin/python benchmarks/foresight_overhead.py [--quick] [--device cpu|cuda]
    .venv/bin/python benchmarks/foresight_overhead.py --device cuda --batch 32 [--compile]   # paper scale

One GPT (default GPT-B, 16x16 tokens, V=16384, 1000 classes: LlamaGen-B at 256 px) is
trained on random tokens with ``mirai.training.objective.Objective`` (next-token loss plus the
auxiliary loss from ``mirai.foresight.build_auxiliary_loss``), one step per call:

* ``baseline``: next-token prediction only;
* ``mirai_i``: + Mirai-I, K=1 MLP head on block 8, targets from a frozen DINOv2-shaped
  ViT-B/14 at 224 px (``build_encoder({"name": "dinov2_vitb14", "pretrained": False})``:
  random weights, built offline; same architecture and cost as the paper's DINOv2-B), fed
  random 256-px images;
* ``mirai_e``: + Mirai-E, K=3 heads on block 8, targets from the EMA model run to block 8.

A step is what ``Trainer.train_step`` does: forward (under bf16 autocast on CUDA by
default), backward, grad-norm clip, AdamW step, EMA update. The three variants share one
GPT, one EMA and one AdamW (the heads a variant does not use have no gradient, so AdamW
skips them), and alternate in order, round after round; each round gives a ratio
variant/baseline and the median over rounds is reported. The forward+backward part is
timed separately (synchronised), since the analytic FLOPs count only that.

Memory, two measures:

* Peak (``--peak-batch``, default 8 on CPU, the timing batch on CUDA): each variant runs in
  its own fresh process that builds only what it needs (GPT, EMA, AdamW; + encoder and head
  for Mirai-I; + heads for Mirai-E) and takes 2 full steps (the first allocates AdamW's
  state). CPU: the process's peak resident set (``VmHWM``), also shown above what the
  process held after importing torch; CUDA: ``torch.cuda.max_memory_allocated``. This is
  everything a variant costs: weights, gradients, optimizer state, EMA, encoder, activations
  and transients.
* Saved activations (all devices, in the timing process): the bytes of the tensors autograd
  saves for backward during the forward, recorded with
  ``torch.autograd.graph.saved_tensors_hooks``, counted once per storage (views share it)
  and excluding parameters' storages: the activation memory a step holds when its backward
  starts, the part of the peak that grows with the batch.

Analytic FLOPs (``mirai.analysis.flops``, per image) are printed beside the measured
ratios, in the paper's Table 15 convention (embedding lookups counted as matmuls, no
attention scores, the encoder forward not counted: 1.70e11 / 1.81e11 / 2.35e11 for
GPT-B) and in an "executed" convention closer to what runs (no embedding lookups, attention
scores counted, encoder forward counted).

``--quick``: GPT-Mini with a random DINOv2-shaped ViT-S/14, batch 2, 2 rounds (seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch import nn

import _common as C
from mirai.analysis.flops import Convention, training_flops, vit_shape
from mirai.foresight import ForesightConfig, build_auxiliary_loss
from mirai.foresight.base import Progress
from mirai.foresight.encoders import build_encoder
from mirai.models import build_gpt
from mirai.models.ema import update_ema
from mirai.training.optim import param_groups
from mirai.training.objective import Objective

PAPER_FLOPS = {"baseline": 1.70e11, "mirai_i": 1.81e11, "mirai_e": 2.35e11}  # Table 15, GPT-B, 256 px
EXECUTED = Convention(embedding=False, attention_scores=True)
MiB = 2**20
PEAK_TAG = "PEAK_MEMORY "  # marks the JSON line a peak-memory process prints


class SavedTensorBytes:
    """Bytes of the distinct non-parameter storages autograd saves inside the context."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.storages = exclude, {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.exclude:
                self.storages[(t.device, ptr)] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            pass
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


VARIANTS = ("baseline", "mirai_i", "mirai_e")


def parse_args() -> argparse.Namespace:
    parser = C.base_parser(__doc__)
    parser.add_argument("--model", help="GPT config (default GPT-B; GPT-Mini with --quick)")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, help="images per timed step (default 2 on CPU, 32 on CUDA)")
    parser.add_argument("--peak-batch", type=int, help="images per step of the peak-memory processes "
                        "(default 8 on CPU, --batch on CUDA; 0 skips them)")
    parser.add_argument("--encoder", help="timm/DINOv2 name of the random Mirai-I encoder "
                        "(default dinov2_vitb14; dinov2_vits14 with --quick)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the random images fed to Mirai-I")
    parser.add_argument("--k", type=int, default=3, help="Mirai-E heads")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on CUDA (if supported), fp32 on CPU, as the trainer")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step (GPT, loss, heads) in place, as the trainer")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant (default 1; 3 with --compile)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peak-of", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one peak process
    args = parser.parse_args()
    args.model = args.model or ("GPT-Mini" if args.quick else "GPT-B")
    args.encoder = args.encoder or ("dinov2_vits14" if args.quick else "dinov2_vitb14")
    args.names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in args.names or not set(args.names) <= set(VARIANTS):
        parser.error("--variants: a comma list from baseline, mirai_i, mirai_e that includes baseline")
    return args


class Setup:
    """GPT, EMA, the variants' auxiliary losses and one AdamW, built as the Trainer builds them."""

    def __init__(self, args: argparse.Namespace, device: torch.device, names: list[str], batch_size: int):
        self.device = device
        self.bf16 = args.precision == "bf16" or (
            args.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
        torch.manual_seed(0)
        self.gpt = build_gpt(args.model, vocab_size=args.vocab, grid_size=args.grid,
                             num_classes=args.classes).to(device)
        self.ema = copy.deepcopy(self.gpt).eval().requires_grad_(False)
        self.cfgs = {
            "mirai_i": ForesightConfig(source="encoder", k=1),
            # warmup=0: the default Mirai-E warm-up (15 epochs NTP-only) would switch the loss off here.
            "mirai_e": ForesightConfig(source="ema", k=args.k, warmup=0.0),
        }
        for cfg in self.cfgs.values():
            cfg.validate()
        self.encoder = None
        if "mirai_i" in names:
            self.encoder = build_encoder({"name": args.encoder, "pretrained": False}, args.grid, device=device)
        self.auxiliaries = {
            name: build_auxiliary_loss(self.cfgs[name], self.gpt, self.ema,
                                       encoder=self.encoder if name == "mirai_i" else None)
            for name in names if name != "baseline"}
        self.objectives = {name: Objective(self.gpt, self.auxiliaries.get(name)).to(device) for name in names}
        everything = nn.ModuleList([self.gpt, *self.auxiliaries.values()])
        self.optimizer = torch.optim.AdamW(param_groups(everything, 0.05), lr=1e-4, betas=(0.9, 0.95),
                                           fused=device.type == "cuda")
        if args.compile:
            for objective in self.objectives.values():  # in place, as Trainer does with compile=true
                objective.compile()  # (the EMA teacher stays eager)
        g = torch.Generator().manual_seed(0)
        self.batch = {
            "tokens": torch.randint(0, args.vocab, (batch_size, args.grid ** 2), generator=g).to(device),
            "labels": torch.randint(0, args.classes, (batch_size,), generator=g).to(device),
            "images": torch.rand(batch_size, 3, args.image_size, args.image_size, generator=g).to(device),
        }
        self.progress = Progress(step=1000, epoch=100.0, fraction=0.25)  # past any warm-up; lambda = 2

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def step_fn(self, name: str):
        """One ``Trainer.train_step``: forward, backward, clip, AdamW, EMA update; returns timings and loss."""
        objective = self.objectives[name]

        def step() -> dict:
            objective.train()
            start = time.perf_counter()
            with self.autocast():
                loss, logs = objective(self.batch, self.progress)
            logs = {k: float(v) for k, v in logs.items()}  # as Trainer.train_step (its finite-loss check)
            loss.backward()
            C.sync(self.device)
            fwd_bwd = time.perf_counter() - start
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            update_ema(self.ema, self.gpt, 0.9999)
            if "loss/foresight" not in logs and name != "baseline":
                raise RuntimeError(f"{name}: the foresight loss did not run (warm-up?)")
            return {"fwd_bwd": fwd_bwd, "loss": float(logs["loss/total"])}
        return step

    def saved_activation_bytes(self, name: str) -> int:
        modules = (self.gpt, self.ema, self.encoder, *self.auxiliaries.values())
        param_ptrs = {t.untyped_storage().data_ptr() for m in modules if m is not None
                      for t in (*m.parameters(), *m.buffers())}
        objective = self.objectives[name].train()
        saved = SavedTensorBytes(param_ptrs)
        with saved.hooks(), self.autocast():
            loss, _ = objective(self.batch, self.progress)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return saved.total


def peak_child(args: argparse.Namespace, device: torch.device) -> None:
    """In a fresh process: build one variant alone, take 2 steps, print its peak memory as JSON."""
    imported = C.rss_bytes("VmRSS")
    setup = Setup(args, device, [args.peak_of], args.peak_batch)
    step = setup.step_fn(args.peak_of)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        step()
    result = {"max_rss_bytes": C.rss_bytes("VmHWM"), "rss_after_import_bytes": imported}
    if device.type == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    print(PEAK_TAG + json.dumps(result))


def peak_memory(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """Each variant's peak memory, from its own process (so nothing another variant built is counted)."""
    peaks = {}
    for name in names:  # the child returns before writing any JSON, so every argument can go along
        cmd = [sys.executable, __file__, *sys.argv[1:], "--peak-of", name, "--peak-batch", str(args.peak_batch)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith(PEAK_TAG)]
        if done.returncode != 0 or not lines:
            sys.exit(f"peak-memory process for {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        peaks[name] = json.loads(lines[-1][len(PEAK_TAG):])
    return peaks


def main() -> None:
    args = parse_args()
    device = C.setup(args)
    batch_size = args.batch or (32 if device.type == "cuda" else 2)
    if args.peak_batch is None:
        args.peak_batch = batch_size if device.type == "cuda" else 8
    if args.peak_of:
        return peak_child(args, device)
    C.warn_if_busy(args.threads)
    model_name, encoder_name, names = args.model, args.encoder, args.names
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    # Peak memory first, each variant in its own process, while this one holds no models.
    peaks = peak_memory(args, names) if args.peak_batch else {}
    setup = Setup(args, device, names, batch_size)
    bf16, encoder, auxiliaries, cfgs, gpt = setup.bf16, setup.encoder, setup.auxiliaries, setup.cfgs, setup.gpt
    n_params = {
        "gpt": sum(p.numel() for p in gpt.parameters()),
        **{f"heads_{n}": sum(p.numel() for p in a.parameters()) for n, a in auxiliaries.items()},
        "encoder": sum(p.numel() for p in encoder.parameters()) if encoder is not None else 0,
    }

    steps = {name: setup.step_fn(name) for name in names}
    times, results = C.interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    fwd_bwd = {name: [r["fwd_bwd"] for r in results[name]] for name in names}

    # ------------------------------------------------------------------ memory
    memory: dict[str, dict] = {
        name: {"saved_activations_bytes": setup.saved_activation_bytes(name), **peaks.get(name, {})} for name in names}

    # ------------------------------------------------------------------ analytic FLOPs
    shape = vit_shape(encoder_name)
    res = (shape.patch if shape else 14) * args.grid
    flops = {"table15": {"baseline": training_flops(gpt.args)["total"]},
             "executed": {"baseline": training_flops(gpt.args, conv=EXECUTED)["total"]}}
    if "mirai_i" in names:
        width = encoder.feature_dim
        flops["table15"]["mirai_i"] = training_flops(gpt.args, cfgs["mirai_i"], target_dim=width)["total"]
        if shape is not None:
            flops["table15"]["mirai_i_with_encoder"] = training_flops(gpt.args, cfgs["mirai_i"], shape, res)["total"]
            flops["executed"]["mirai_i"] = training_flops(gpt.args, cfgs["mirai_i"], shape, res, EXECUTED)["total"]
    if "mirai_e" in names:
        flops["table15"]["mirai_e"] = training_flops(gpt.args, cfgs["mirai_e"])["total"]
        flops["executed"]["mirai_e"] = training_flops(gpt.args, cfgs["mirai_e"], conv=EXECUTED)["total"]

    # ------------------------------------------------------------------ report
    step_ratio = {n: C.median(C.round_ratios(times, n, "baseline")) for n in names}
    fb_ratio = {n: C.median(C.round_ratios(fwd_bwd, n, "baseline")) for n in names}

    def fratio(conv: str, key: str) -> float | None:
        table = flops[conv]
        return table[key] / table["baseline"] if key in table else None

    print(f"{model_name} ({n_params['gpt'] / 1e6:.1f} M), {args.grid}x{args.grid} tokens, V={args.vocab}, batch "
          f"{batch_size}, {'bf16 autocast' if bf16 else 'fp32'}{', compiled' if args.compile else ''}, {device}, "
          f"{args.threads} threads, {repeats} rounds; Mirai-I encoder: random {encoder_name} at {res} px")
    peak_key = "cuda_peak_bytes" if device.type == "cuda" else "max_rss_bytes"
    rows = []
    for n in names:
        mem, base = memory[n], memory["baseline"]
        enc_key = "mirai_i_with_encoder" if n == "mirai_i" else n
        row = [n, C.median(times[n]), batch_size / C.median(times[n]), step_ratio[n], fb_ratio[n],
               fratio("table15", n) or 1.0, fratio("table15", enc_key) or 1.0, fratio("executed", n) or 1.0,
               f"{mem['saved_activations_bytes'] / MiB:.0f}",
               f"{mem['saved_activations_bytes'] / base['saved_activations_bytes']:.3f}"]
        if peak_key in mem:
            row += [f"{mem[peak_key] / MiB:.0f}", f"{mem[peak_key] / base[peak_key]:.3f}"]
            if device.type == "cpu":  # the interpreter and torch's own footprint left out
                above = {k: m["max_rss_bytes"] - m["rss_after_import_bytes"] for k, m in memory.items()}
                row += [f"{above[n] / above['baseline']:.3f}"]
        rows.append(row)
    headers = ["variant", "step s", "images/s", "step ratio", "fwd+bwd ratio", "FLOPs T15", "T15+enc", "FLOPs exec",
               "saved MiB", "saved ratio"]
    if peak_key in memory["baseline"]:
        headers += [f"peak MiB (b{args.peak_batch})", "peak ratio"]
        headers += ["peak ratio above import"] if device.type == "cpu" else []
    C.print_table(headers, rows)
    print("FLOPs columns: ratios to the baseline; T15 = Table 15 convention (encoder not counted), T15+enc = "
          "with the encoder forward, exec = no embedding lookups, attention scores and encoder counted.")
    print("per-image FLOPs (Table 15 convention): " + ", ".join(
        f"{k} {v:.3g}" for k, v in flops["table15"].items()) + "  [paper, GPT-B: 1.70e11 / 1.81e11 / 2.35e11]")

    C.write_json("foresight_overhead", {
        "benchmark": "foresight_overhead",
        "machine": C.machine(device),
        "settings": {"model": model_name, "grid": args.grid, "vocab": args.vocab, "classes": args.classes,
                     "batch": batch_size, "peak_batch": args.peak_batch,
                     "encoder": f"{encoder_name} (random init) at {res} px",
                     "image_size": args.image_size, "k_mirai_e": args.k, "bf16": bf16, "compile": args.compile,
                     "repeats": repeats, "warmup": warmup, "quick": args.quick, "threads": args.threads},
        "parameters": n_params,
        "seconds_per_step": times,
        "seconds_fwd_bwd": fwd_bwd,
        "images_per_s": {n: batch_size / C.median(t) for n, t in times.items()},
        "step_time_ratio_to_baseline": step_ratio,
        "fwd_bwd_time_ratio_to_baseline": fb_ratio,
        "step_time_ratio_per_round": {n: C.round_ratios(times, n, "baseline") for n in names},
        "flops_per_image": flops,
        "flops_ratio_to_baseline": {conv: {k: v / t["baseline"] for k, v in t.items()} for conv, t in flops.items()},
        "paper_flops_per_image": PAPER_FLOPS,
        "memory": memory,
        "memory_method": "saved_activations_bytes: distinct non-parameter storages saved for backward during the "
                         "forward (torch.autograd.graph.saved_tensors_hooks), timing batch; max_rss_bytes / "
                         "cuda_peak_bytes: peak resident set (VmHWM) / torch.cuda.max_memory_allocated of a fresh "
                         "process that builds only that variant and takes 2 steps at peak_batch; "
                         "rss_after_import_bytes: that process's resident set (VmRSS) before building anything",
        "losses_last_round": {n: results[n][-1]["loss"] for n in names},
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
