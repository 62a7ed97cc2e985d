"""KV-cache decoding throughput, torch.compile against eager, as a ratio in one run.

    .venv/bin/python benchmarks/decode_compile.py [--quick] [--device cpu|cuda] [--threads 1]
    .venv/bin/python benchmarks/decode_compile.py --model GPT-Mini --grid 8 --vocab 512 --batch 16 --order par
    .venv/bin/python benchmarks/decode_compile.py --model GPT-Micro --profile   # + where each path's time goes

One randomly initialised GPT (output layer re-drawn, so that draws are not uniform) generates
``batch`` token grids with ``mirai.sampling.generate`` twice per round: eager, and with
``compile=True`` (every decoding pass through one ``torch.compile(fullgraph=True)`` graph over the
static KV cache). Both draw from the same seed and must draw the same tokens (asserted in fp32).
Compilation happens in the untimed warm-up call. The two alternate over ``--repeats`` rounds; the
speed-up is the median of per-round ratios eager time / compiled time. ``--profile`` then runs one
more call of each path under ``torch.profiler`` and prints the operators with the most self CPU time
(also written to the JSON): what compiling removed, and what both paths still share.

Defaults: GPT-Mini on the Fashion-MNIST vq8 shape (8x8 tokens, 512 codes, 10 classes), raster
order, batch 16, guidance 2.0 (the decoded batch is 32), fp32, 5 rounds. ``--quick``: GPT-Nano, 2 rounds.
"""

from __future__ import annotations

import time

import torch

import _common as C
from mirai.models import build_gpt
from mirai.sampling import generate


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--model", help="GPT config (default GPT-Mini; GPT-Nano with --quick)")
    parser.add_argument("--grid", type=int, default=8, help="token grid side (default 8)")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="images per call (default 16)")
    parser.add_argument("--order", choices=["raster", "par"], default="raster")
    parser.add_argument("--regions", type=int, default=2, help="PAR regions per side (with --order par)")
    parser.add_argument("--cfg-scale", type=float, default=2.0, help="!= 1 doubles the decoded batch")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16 runs under autocast; tokens may then differ (reported, not asserted)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed rounds, profile one call of each path (top operators by self time)")
    args = parser.parse_args()
    if args.profile and args.device == "cuda":
        parser.error("--profile measures CPU time only, which on a GPU shows launch cost, not kernel time: "
                     "use it with --device cpu")
    repeats = args.repeats or (2 if args.quick else 5)
    args.model = args.model or ("GPT-Nano" if args.quick else "GPT-Mini")
    device = C.setup(args)
    C.warn_if_busy(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    order = {"order": "par", "regions_per_side": args.regions} if args.order == "par" else {}

    torch.manual_seed(0)
    model = build_gpt(args.model, vocab_size=args.vocab, grid_size=args.grid, num_classes=args.classes,
                      **order).to(device).eval()
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)
    labels = torch.arange(args.batch, device=device) % args.classes

    def run(compiled: bool):
        def call() -> torch.Tensor:
            generator = torch.Generator(device=device).manual_seed(0)
            return generate(model, labels, cfg_scale=args.cfg_scale, generator=generator, dtype=dtype,
                            compile=compiled)
        return call

    variants = {"eager": run(False), "compiled": run(True)}
    start = time.perf_counter()
    variants["compiled"]()  # the compile, outside the timed rounds
    compile_s = time.perf_counter() - start
    times, results = C.interleaved(variants, repeats=repeats, warmup=1, device=device)
    identical = all(torch.equal(a, b) for a, b in zip(results["eager"], results["compiled"]))
    if dtype == torch.float32:
        assert identical, "compiled and eager decoding drew different tokens"
    n_tokens = args.batch * model.args.seq_len
    ratios = C.round_ratios(times, "eager", "compiled")
    speedup = C.median(ratios)

    passes = len(model.decode_schedule())
    print(f"{args.model}, {args.grid}x{args.grid} tokens ({args.order}, {passes} passes), V={args.vocab}, batch "
          f"{args.batch}, cfg {args.cfg_scale}, {args.dtype}, {device}, {args.threads} threads, {repeats} rounds")
    C.print_table(["path", "median s", "range s", "tokens/s"],
                  [[name, C.median(t), C.spread(t), n_tokens / C.median(t)] for name, t in times.items()])
    print(f"compiled speed-up (median of per-round eager/compiled): {speedup:.2f}x  [rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}]; first compiled call (compiling) {compile_s:.1f} s")
    print(f"token sequences identical: {identical}" + (" (asserted)" if dtype == torch.float32 else ""))
    profiles = {name: C.top_ops(call, rows=12) for name, call in variants.items()} if args.profile else None
    for name, ops in (profiles or {}).items():
        print(f"\n{name}: operators with the most self CPU time in one profiled call")
        C.print_table(["operator", "self ms", "calls", "share"],
                      [[o["op"][:60], f"{o['self_ms']:.1f}", o["calls"], f"{o['share']:.1%}"] for o in ops])

    C.write_json("decode_compile", {
        "benchmark": "decode_compile",
        "machine": C.machine(device),
        "settings": {"model": args.model, "grid": args.grid, "vocab": args.vocab, "batch": args.batch,
                     "order": args.order, "regions": args.regions, "cfg_scale": args.cfg_scale,
                     "dtype": args.dtype, "repeats": repeats, "quick": args.quick},
        "seconds": times,
        "compile_seconds": compile_s,
        "tokens_per_call": n_tokens,
        "tokens_per_s": {name: n_tokens / C.median(t) for name, t in times.items()},
        "speedup_compiled_over_eager": speedup,
        "speedup_per_round": ratios,
        "tokens_identical": identical,
        "profile": profiles,
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
