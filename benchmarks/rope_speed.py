"""2-D RoPE as eager code runs it: one complex product against LlamaGen's four real products, in one run.

    .venv/bin/python benchmarks/rope_speed.py [--quick] [--threads 1]

``mirai.models.gpt.apply_rope`` rotates the q and k heads of one attention layer, read as the strided view
of the fused qkv projection's output that ``Attention`` passes it, forward and backward, with
``complex_product=True`` (eager code's default) and ``False`` (LlamaGen's ``apply_rotary_emb`` form, which
compiled code keeps). Both give bit-identical values and gradients (asserted here and in tests/test_gpt.py).
Shapes: batch 32 at the training step of ``train_mfu.py`` (GPT-Micro and GPT-Mini widths, 8x8 tokens),
and batch 2 x one token (a guided batch-1 decoding pass). The variants alternate over ``--repeats`` rounds
(default 7; 2 with ``--quick``); speed-up = median of per-round ratios real / complex.
"""

from __future__ import annotations

import torch

import _common as C
from mirai.models.gpt import apply_rope, rope_2d_table

# (name, batch, tokens, heads, head_dim): the shapes apply_rope sees in one attention layer.
SHAPES = [("GPT-Micro step", 32, 65, 2, 64), ("GPT-Mini step", 32, 65, 4, 64), ("decoding pass", 2, 1, 4, 64)]


def rope_call(batch: int, tokens: int, heads: int, head_dim: int, complex_product: bool, calls: int,
              device: torch.device):
    """A closure: ``calls`` x (RoPE of q and k of one layer, forward and backward); returns the last gradient."""
    torch.manual_seed(0)
    table = rope_2d_table(8, head_dim)[:tokens].to(device)
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim, device=device, requires_grad=True)
    grad_out = torch.randn(batch, tokens, 2 * heads, head_dim, device=device)

    def call() -> torch.Tensor:
        for _ in range(calls):
            view = qkv[..., : 2 * heads * head_dim].view(batch, tokens, 2 * heads, head_dim)
            out = apply_rope(view, table, complex_product)
            grad, = torch.autograd.grad((out * grad_out).sum(), qkv)
        return grad
    return call


def main() -> None:
    parser = C.base_parser(__doc__)
    args = parser.parse_args()
    device = C.setup(args)
    C.warn_if_busy(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    calls = 5 if args.quick else 50
    rows, report = [], {}
    for name, *shape in SHAPES:
        variants = {"real (LlamaGen)": rope_call(*shape, complex_product=False, calls=calls, device=device),
                    "complex": rope_call(*shape, complex_product=True, calls=calls, device=device)}
        times, results = C.interleaved(variants, repeats=repeats, device=device)
        assert torch.equal(results["real (LlamaGen)"][0], results["complex"][0]), "the two forms' gradients differ"
        ratios = C.round_ratios(times, "real (LlamaGen)", "complex")
        report[name] = {"shape": shape, "seconds_per_call": times, "speedup_per_round": ratios}
        rows.append([name, "x".join(map(str, shape)), C.median(times["real (LlamaGen)"]) / calls * 1e6,
                     C.median(times["complex"]) / calls * 1e6, C.median(ratios), C.spread(ratios)])
    print(f"{device}, {args.threads} threads, {repeats} rounds of {calls} forward+backward calls")
    C.print_table(["shape", "B x T x heads x head_dim", "real us", "complex us", "speed-up", "round range"], rows)
    C.write_json("rope_speed", {"benchmark": "rope_speed", "machine": C.machine(device),
                                "settings": {"repeats": repeats, "calls": calls}, "results": report},
                 args.out, args.quick)


if __name__ == "__main__":
    main()
