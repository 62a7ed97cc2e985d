"""Training-step time and memory of the baseline, Mirai-I and Mirai-E, as ratios in one run.

    .venv/bin/python benchmarks/foresight_overhead.py [--quick] [--device cpu|cuda]
    .venv/bin/python benchmarks/foresight_overhead.py --device cuda --batch 32 [--compile]   # paper scale

One GPT (default GPT-B, 16x16 tokens, V=16384, 1000 classes: LlamaGen-B at 256 px) is
trained on random tokens with ``mirai.training.trainer.Objective`` (next-token loss plus the
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

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over one step after
``reset_peak_memory_stats``, reported as the peak and as the increase over what was
allocated when the step started (the step's own activations, gradients and optimizer
temporaries; weights, EMA, encoder, optimizer state are resident in every variant).
All devices: the bytes of the tensors autograd saves for backward during the forward,
recorded with ``torch.autograd.graph.saved_tensors_hooks``, counted once per storage
(views share it) and excluding parameters' storages (weights are resident anyway). This
is the activation memory a step holds at the start of its backward, its main
variant-dependent memory cost; it does not count gradients, optimizer temporaries, or
transient buffers freed during the forward (e.g. the frozen encoder's activations).

Analytic FLOPs (``mirai.foresight.flops``, per image) are printed beside the measured
ratios, in the paper's Table 15 convention (embedding lookups counted as matmuls, no
attention scores, the encoder forward not counted: 1.70e11 / 1.81e11 / 2.35e11 for
GPT-B) and in an "executed" convention closer to what runs (no embedding lookups, attention
scores counted, encoder forward counted).

``--quick``: GPT-Mini with a random DINOv2-shaped ViT-S/14, batch 2, 2 rounds (seconds).
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch
from torch import nn

import _common as C
from mirai.foresight import ForesightConfig, build_auxiliary_loss
from mirai.foresight.base import Progress
from mirai.foresight.encoders import build_encoder
from mirai.foresight.flops import Convention, training_flops, vit_shape
from mirai.models import build_gpt
from mirai.training.trainer import Objective, param_groups, update_ema

PAPER_FLOPS = {"baseline": 1.70e11, "mirai_i": 1.81e11, "mirai_e": 2.35e11}  # Table 15, GPT-B, 256 px
EXECUTED = Convention(embedding=False, attention_scores=True)
MiB = 2**20


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


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--model", help="GPT config (default GPT-B; GPT-Mini with --quick)")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, help="images per step (default 2 on CPU, 32 on CUDA)")
    parser.add_argument("--encoder", help="timm/DINOv2 name of the random Mirai-I encoder "
                        "(default dinov2_vitb14; dinov2_vits14 with --quick)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the random images fed to Mirai-I")
    parser.add_argument("--k", type=int, default=3, help="Mirai-E heads")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on CUDA (if supported), fp32 on CPU, as the trainer")
    parser.add_argument("--compile", action="store_true", help="torch.compile the GPT in place, as the trainer")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant (default 1; 3 with --compile)")
    parser.add_argument("--variants", default="baseline,mirai_i,mirai_e")
    args = parser.parse_args()
    device = C.setup(args)
    C.warn_if_busy(args.threads)
    model_name = args.model or ("GPT-Mini" if args.quick else "GPT-B")
    encoder_name = args.encoder or ("dinov2_vits14" if args.quick else "dinov2_vitb14")
    batch_size = args.batch or (32 if device.type == "cuda" else 2)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in names or not set(names) <= {"baseline", "mirai_i", "mirai_e"}:
        parser.error("--variants: a comma list from baseline, mirai_i, mirai_e that includes baseline")
    bf16 = args.precision == "bf16" or (
        args.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    # ------------------------------------------------------------------ models (as the Trainer builds them)
    torch.manual_seed(0)
    gpt = build_gpt(model_name, vocab_size=args.vocab, grid_size=args.grid, num_classes=args.classes).to(device)
    ema = copy.deepcopy(gpt).eval().requires_grad_(False)
    cfgs = {
        "mirai_i": ForesightConfig(source="encoder", k=1),
        # warmup=0: the default Mirai-E warm-up (15 epochs NTP-only) would switch the loss off here.
        "mirai_e": ForesightConfig(source="ema", k=args.k, warmup=0.0),
    }
    for cfg in cfgs.values():
        cfg.validate()
    encoder = None
    if "mirai_i" in names:
        encoder = build_encoder({"name": encoder_name, "pretrained": False}, args.grid, device=device)
    auxiliaries = {name: build_auxiliary_loss(cfgs[name], gpt, ema, encoder=encoder if name == "mirai_i" else None)
                   for name in names if name != "baseline"}
    objectives = {name: Objective(gpt, auxiliaries.get(name)).to(device) for name in names}
    everything = nn.ModuleList([gpt, *auxiliaries.values()])
    optimizer = torch.optim.AdamW(param_groups(everything, 0.05), lr=1e-4, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    if args.compile:
        gpt.compile()  # in place, as Trainer does with compile=true (the EMA teacher stays eager)

    g = torch.Generator().manual_seed(0)
    batch = {
        "tokens": torch.randint(0, args.vocab, (batch_size, args.grid ** 2), generator=g).to(device),
        "labels": torch.randint(0, args.classes, (batch_size,), generator=g).to(device),
        "images": torch.rand(batch_size, 3, args.image_size, args.image_size, generator=g).to(device),
    }
    progress = Progress(step=1000, epoch=100.0, fraction=0.25)  # past any warm-up; lambda = 2
    n_params = {
        "gpt": sum(p.numel() for p in gpt.parameters()),
        **{f"heads_{n}": sum(p.numel() for p in a.parameters()) for n, a in auxiliaries.items()},
        "encoder": sum(p.numel() for p in encoder.parameters()) if encoder is not None else 0,
    }

    def step_fn(name: str):
        objective = objectives[name]

        def step() -> dict:
            objective.train()
            start = time.perf_counter()
            with autocast():
                loss, logs = objective(batch, progress)
            logs = {k: float(v) for k, v in logs.items()}  # as Trainer.train_step (its finite-loss check)
            loss.backward()
            C.sync(device)
            fwd_bwd = time.perf_counter() - start
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update_ema(ema, gpt, 0.9999)
            if "loss/foresight" not in logs and name != "baseline":
                raise RuntimeError(f"{name}: the foresight loss did not run (warm-up?)")
            return {"fwd_bwd": fwd_bwd, "loss": float(logs["loss/total"])}
        return step

    steps = {name: step_fn(name) for name in names}
    times, results = C.interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    fwd_bwd = {name: [r["fwd_bwd"] for r in results[name]] for name in names}

    # ------------------------------------------------------------------ memory
    param_ptrs = set()
    for module in (gpt, ema, encoder, *auxiliaries.values()):
        if module is not None:
            param_ptrs |= {p.untyped_storage().data_ptr() for p in module.parameters()}
            param_ptrs |= {b.untyped_storage().data_ptr() for b in module.buffers()}
    memory: dict[str, dict] = {}
    for name in names:
        objective = objectives[name].train()
        saved = SavedTensorBytes(param_ptrs)
        with saved.hooks(), autocast():
            loss, _ = objective(batch, progress)
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        memory[name] = {"saved_activations_bytes": saved.total}
        if device.type == "cuda":
            C.sync(device)
            start_bytes = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            steps[name]()
            C.sync(device)
            peak = torch.cuda.max_memory_allocated(device)
            memory[name].update(cuda_peak_bytes=peak, cuda_step_increase_bytes=peak - start_bytes,
                                cuda_allocated_at_step_start_bytes=start_bytes)

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
    rows = []
    for n in names:
        mem = memory[n]
        enc_key = "mirai_i_with_encoder" if n == "mirai_i" else n
        row = [n, C.median(times[n]), batch_size / C.median(times[n]), step_ratio[n], fb_ratio[n],
               fratio("table15", n) or 1.0, fratio("table15", enc_key) or 1.0, fratio("executed", n) or 1.0,
               f"{mem['saved_activations_bytes'] / MiB:.0f}",
               f"{mem['saved_activations_bytes'] / memory['baseline']['saved_activations_bytes']:.3f}"]
        if device.type == "cuda":
            row += [f"{mem['cuda_peak_bytes'] / MiB:.0f}", f"{mem['cuda_step_increase_bytes'] / MiB:.0f}"]
        rows.append(row)
    headers = ["variant", "step s", "images/s", "step ratio", "fwd+bwd ratio", "FLOPs T15", "T15+enc", "FLOPs exec",
               "saved MiB", "saved ratio"]
    if device.type == "cuda":
        headers += ["peak MiB", "step +MiB"]
    C.print_table(headers, rows)
    print("FLOPs columns: ratios to the baseline; T15 = Table 15 convention (encoder not counted), T15+enc = "
          "with the encoder forward, exec = no embedding lookups, attention scores and encoder counted.")
    print("per-image FLOPs (Table 15 convention): " + ", ".join(
        f"{k} {v:.3g}" for k, v in flops["table15"].items()) + "  [paper, GPT-B: 1.70e11 / 1.81e11 / 2.35e11]")

    C.write_json("foresight_overhead", {
        "benchmark": "foresight_overhead",
        "machine": C.machine(device),
        "settings": {"model": model_name, "grid": args.grid, "vocab": args.vocab, "classes": args.classes,
                     "batch": batch_size, "encoder": f"{encoder_name} (random init) at {res} px",
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
                         "forward (torch.autograd.graph.saved_tensors_hooks); cuda_*: "
                         "torch.cuda.max_memory_allocated over one full step after reset_peak_memory_stats",
        "losses_last_round": {n: results[n][-1]["loss"] for n in names},
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
