"""Sampling throughput with the KV cache against naive full recomputation, as a ratio in one run.

    .venv/bin/python benchmarks/sampling_kv_cache.py [--quick] [--device cpu|cuda]
    .venv/bin/python benchmarks/sampling_kv_cache.py --model GPT-S --grid 16 --batch 4 --cfg-scale 2.0

A randomly initialised GPT (output layer re-drawn, so that draws are not uniform) generates
``batch`` token grids with both paths of ``mirai.sampling.generate``, from the same seed. The
naive path reruns the whole prefix (and the output layer on every position) at every step,
as the reference the cache is tested against. Both paths must draw exactly the same tokens
(asserted, every round, in fp32), so the ratio compares equal work products. The two paths
alternate in order over ``--repeats`` rounds; the reported speed-up is the median of the
per-round ratios naive time / cached time.

Defaults: GPT-S, 16x16 tokens (256 px), batch 2, 3 rounds. ``--quick``: GPT-Mini on an 8x8
grid, 2 rounds (seconds).
"""

from __future__ import annotations

import torch

import _common as C
from mirai.models import build_gpt
from mirai.sampling import generate


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--model", help="GPT config (default GPT-S; GPT-Mini with --quick)")
    parser.add_argument("--grid", type=int, help="token grid side (default 16; 8 with --quick)")
    parser.add_argument("--batch", type=int, help="images per call (default 2)")
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="!= 1 doubles the decoded batch")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16 runs under autocast; tokens may then differ between paths (not asserted)")
    args = parser.parse_args()
    grid = args.grid or (8 if args.quick else 16)
    batch = args.batch or 2
    repeats = args.repeats or (2 if args.quick else 3)
    args.model = args.model or ("GPT-Mini" if args.quick else "GPT-S")
    device = C.setup(args)
    C.warn_if_busy(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    torch.manual_seed(0)
    model = build_gpt(args.model, vocab_size=args.vocab, grid_size=grid, num_classes=1000).to(device).eval()
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)  # a zero output layer would make every draw uniform
    labels = torch.arange(batch, device=device)

    def run(cached: bool):
        def call() -> torch.Tensor:
            generator = torch.Generator(device=device).manual_seed(0)
            return generate(model, labels, cfg_scale=args.cfg_scale, generator=generator, dtype=dtype,
                            use_kv_cache=cached)
        return call

    variants = {"kv_cache": run(True), "naive": run(False)}
    reference: dict[str, torch.Tensor] = {}
    mismatched_rounds = 0

    def checked(name: str):
        def call():
            nonlocal mismatched_rounds
            tokens = variants[name]()
            other = "naive" if name == "kv_cache" else "kv_cache"
            reference.setdefault(name, tokens)
            if other in reference and not torch.equal(tokens, reference[other]):
                mismatched_rounds += 1
                if dtype == torch.float32:
                    raise AssertionError("the KV-cache and naive paths drew different tokens")
            return tokens
        return call

    # Warm-up: one cached generation, and one full-length forward (the naive path's largest shapes);
    # a whole naive generation would cost as much as a timed round.
    checked("kv_cache")()
    with torch.no_grad():
        cond = labels.repeat(2) if args.cfg_scale != 1.0 else labels
        model(torch.zeros(len(cond), model.args.seq_len - 1, dtype=torch.long, device=device), cond)
    times, results = C.interleaved({n: checked(n) for n in variants}, repeats=repeats, warmup=0, device=device)
    identical = all(torch.equal(a, b) for a, b in zip(results["kv_cache"], results["naive"]))
    if dtype == torch.float32:
        assert identical and mismatched_rounds == 0, "the KV-cache and naive paths drew different tokens"
    n_tokens = batch * model.args.seq_len
    ratios = C.round_ratios(times, "naive", "kv_cache")
    speedup = C.median(ratios)

    rows = [[name, C.median(t), C.spread(t), n_tokens / C.median(t)] for name, t in times.items()]
    print(f"{args.model}, {grid}x{grid} tokens, batch {batch}, cfg {args.cfg_scale}, {args.dtype}, "
          f"{device}, {args.threads} threads, {repeats} rounds")
    C.print_table(["path", "median s", "range s", "tokens/s"], rows)
    print(f"KV-cache speed-up (median of per-round naive/cached): {speedup:.2f}x  [rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}]")
    print(f"token sequences identical: {identical}" + ("" if dtype != torch.float32 else " (asserted)"))

    C.write_json("sampling_kv_cache", {
        "benchmark": "sampling_kv_cache",
        "machine": C.machine(device),
        "settings": {"model": args.model, "grid": grid, "batch": batch, "vocab": args.vocab,
                     "cfg_scale": args.cfg_scale, "dtype": args.dtype, "repeats": repeats, "quick": args.quick},
        "seconds": times,
        "tokens_per_call": n_tokens,
        "tokens_per_s": {name: n_tokens / C.median(t) for name, t in times.items()},
        "speedup_naive_over_cached": speedup,
        "speedup_per_round": ratios,
        "tokens_identical": identical,
    }, args.out, args.quick)


if __name__ == "__main__":
    main()
