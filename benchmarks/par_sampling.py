"""PAR's sampling speed-up over raster decoding for the same model, as a ratio in one run.

    .venv/bin/python benchmarks/par_sampling.py [--quick] [--device cpu|cuda] [--batches 1,16]
    .venv/bin/python benchmarks/par_sampling.py --model GPT-Mini --grid 16 --regions 2 --batches 1,16

One randomly initialised GPT (output layer re-drawn, so draws are not uniform) decodes the same
labels twice per round: in raster order (N forward passes) and, with the same weights plus PAR's
learnable tokens, in PAR order with M x M regions (n + N/n - 1 passes). Both use the KV cache and
classifier-free guidance (the batch is doubled). The two orders alternate over ``--repeats``
rounds; the reported speed-up is the median of per-round ratios raster time / PAR time. The
limit is the ratio of forward passes (256 / 67 = 3.8x on 16x16 with M = 2); each PAR pass
carries n query tokens instead of one, so the gap to the limit is the cost of those extra rows.

Defaults: GPT-Mini, 16x16 grid, M = 2, batches 1 and 16, cfg 2.0, 3 rounds. ``--quick``: an 8x8
grid and 2 rounds.
"""

from __future__ import annotations

import torch

import _common as C
from mirai.models import build_gpt
from mirai.models.par import forward_passes
from mirai.sampling import generate


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--model", default="GPT-Mini", help="GPT config (default GPT-Mini)")
    parser.add_argument("--grid", type=int, help="token grid side (default 16; 8 with --quick)")
    parser.add_argument("--regions", type=int, default=2, help="PAR regions per side M (default 2)")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    args = parser.parse_args()
    grid = args.grid or (8 if args.quick else 16)
    repeats = args.repeats or (2 if args.quick else 3)
    batches = [int(b) for b in args.batches.split(",")]
    device = C.setup(args)
    C.warn_if_busy(args.threads)

    torch.manual_seed(0)
    raster = build_gpt(args.model, vocab_size=args.vocab, grid_size=grid, num_classes=1000).to(device).eval()
    par = build_gpt(args.model, vocab_size=args.vocab, grid_size=grid, num_classes=1000, order="par",
                    regions_per_side=args.regions).to(device).eval()
    with torch.no_grad():
        raster.output.weight.normal_(0, 0.02)  # a zero output layer would make every draw uniform
    par.load_state_dict({**par.state_dict(), **raster.state_dict()})  # same weights, plus the learnable tokens
    passes = {"raster": forward_passes(grid, 1), "par": forward_passes(grid, args.regions)}
    limit = passes["raster"] / passes["par"]

    results = {}
    for batch in batches:
        labels = torch.arange(batch, device=device) % 1000

        def run(model):
            def call() -> torch.Tensor:
                return generate(model, labels, cfg_scale=args.cfg_scale,
                                generator=torch.Generator(device=device).manual_seed(0))
            return call

        times, _ = C.interleaved({"raster": run(raster), "par": run(par)}, repeats=repeats, warmup=1, device=device)
        ratios = C.round_ratios(times, "raster", "par")
        speedup = C.median(ratios)
        results[batch] = {"seconds": times, "speedup": speedup, "speedup_per_round": ratios,
                          "fraction_of_limit": speedup / limit}
        print(f"{args.model}, {grid}x{grid} tokens, M={args.regions}, batch {batch}, cfg {args.cfg_scale}, "
              f"{device}, {args.threads} threads, {repeats} rounds")
        C.print_table(["order", "passes", "median s", "range s"],
                      [[name, passes[name], C.median(t), C.spread(t)] for name, t in times.items()])
        print(f"PAR speed-up (median of per-round raster/PAR): {speedup:.2f}x of a {limit:.2f}x limit "
              f"({speedup / limit:.0%})  [rounds: {', '.join(f'{r:.2f}' for r in ratios)}]")

    C.write_json("par_sampling", {
        "benchmark": "par_sampling",
        "machine": C.machine(device),
        "settings": {"model": args.model, "grid": grid, "regions": args.regions, "batches": batches,
                     "vocab": args.vocab, "cfg_scale": args.cfg_scale, "repeats": repeats, "quick": args.quick},
        "forward_passes": passes,
        "limit": limit,
        "results": results,
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
