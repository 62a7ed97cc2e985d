"""Sampling throughput with the KV cache against naive full recomputation, as a ratio in one run.

    .venv/bin/python benchmarks/sampling_kv_cache.py --model GPT-S --grid 16 --batch 4

Both paths draw the same tokens (checked), so the ratio compares equal work products.
"""

from __future__ import annotations

import argparse
import time

import torch

from mirai.models import build_gpt
from mirai.sampling import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="GPT-S")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_gpt(args.model, vocab_size=16384, grid_size=args.grid, num_classes=1000).eval()
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)  # a zero output layer would make every draw uniform
    labels = torch.arange(args.batch)
    results = {}
    for name, cached in (("kv_cache", True), ("naive", False)):
        generate(model, labels[:1], generator=torch.Generator().manual_seed(0), use_kv_cache=cached)  # warm-up
        start = time.perf_counter()
        tokens = generate(model, labels, cfg_scale=args.cfg_scale, generator=torch.Generator().manual_seed(0),
                          use_kv_cache=cached)
        elapsed = time.perf_counter() - start
        results[name] = (tokens, tokens.numel() / elapsed)
        print(f"{name:9s} {tokens.numel() / elapsed:9.1f} tokens/s ({elapsed:.1f} s)")
    assert torch.equal(results["kv_cache"][0], results["naive"][0]), "cache and naive paths disagree"
    print(f"speed-up of the KV cache: {results['kv_cache'][1] / results['naive'][1]:.1f}x "
          f"({args.model}, {args.grid}x{args.grid} tokens, batch {args.batch}, cfg {args.cfg_scale}, "
          f"{args.threads} threads)")


if __name__ == "__main__":
    main()
