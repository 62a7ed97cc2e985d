"""2-D RoPE in eager code: the project's form against LlamaGen's, forward and backward, in one run.

    .venv/bin/python benchmarks/rope_speed.py [--quick] [--threads 1]

``mirai.models.rope.apply_rope`` (x * (cos, cos) + swap(x) * (-sin, sin)) against ``llamagen_rope`` below
(LlamaGen's ``apply_rotary_emb``: four products, a difference, a sum and a stack), each rotating the q and k
heads of one attention layer: ours both at once, as ``Attention`` calls it, LlamaGen's q then k, as its
``Attention`` does, on the strided views of the fused qkv projection's output. Values and gradients are
asserted bit-identical. Ours also builds the rotation's factors (``rope_factors``) in every call, which the
GPT does once per forward pass for all its layers, so its time here is an upper bound per layer. Shapes: batch 32 at the training step of ``train_mfu.py`` (GPT-Micro, GPT-Mini,
8x8 tokens) and a guided batch-1 decoding pass of GPT-Mini (2 rows x 1 token). The two alternate over
``--repeats`` rounds (default 7; 2 with ``--quick``, which also makes 5 calls per round instead of 50);
speed-up = median of per-round ratios LlamaGen's time / ours.
"""

from __future__ import annotations

import torch

import _common as C
from mirai.models.rope import apply_rope, rope_2d_table, rope_factors

# (name, batch, tokens, heads, head_dim): the shapes one attention layer rotates.
SHAPES = [("GPT-Micro step", 32, 65, 4, 32), ("GPT-Mini step", 32, 65, 4, 64), ("GPT-Mini decoding pass", 2, 1, 4, 64)]


def llamagen_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """LlamaGen's ``apply_rotary_emb`` (autoregressive/models/gpt.py, commit ce98ec4), written out as the
    reference that ``apply_rope`` must equal to the bit: (B, T, H, D) ``x``, (T, D/2, 2) table."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * t[..., 0] - xs[..., 1] * t[..., 1],
                       xs[..., 1] * t[..., 0] + xs[..., 0] * t[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


def rope_call(batch: int, tokens: int, heads: int, head_dim: int, ours: bool, calls: int, device: torch.device):
    """A closure: ``calls`` x (RoPE of q and k of one layer, forward and backward); returns (q and k, gradient)."""
    torch.manual_seed(0)
    table = rope_2d_table(8, head_dim)[:tokens].to(device)
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim, device=device, requires_grad=True)
    grad_out = torch.randn(batch, tokens, 2 * heads, head_dim, device=device)

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(calls):
            qk = qkv[..., : 2 * heads * head_dim].view(batch, tokens, 2 * heads, head_dim)
            out = apply_rope(qk, rope_factors(table)) if ours else torch.cat(
                [llamagen_rope(part, table) for part in qk.split(heads, dim=2)], dim=2)
            grad, = torch.autograd.grad((out * grad_out).sum(), qkv)
        return out, grad
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
        variants = {"llamagen": rope_call(*shape, ours=False, calls=calls, device=device),
                    "ours": rope_call(*shape, ours=True, calls=calls, device=device)}
        times, results = C.interleaved(variants, repeats=repeats, device=device)
        for theirs, ours in zip(results["llamagen"][0], results["ours"][0]):
            assert torch.equal(theirs, ours), "apply_rope differs from LlamaGen's form"
        ratios = C.round_ratios(times, "llamagen", "ours")
        report[name] = {"shape": shape, "seconds_per_call": times, "speedup_per_round": ratios}
        rows.append([name, "x".join(map(str, shape)), C.median(times["llamagen"]) / calls * 1e6,
                     C.median(times["ours"]) / calls * 1e6, C.median(ratios), C.spread(ratios)])
    print(f"{device}, {args.threads} threads, {repeats} rounds of {calls} forward+backward calls")
    C.print_table(["shape", "B x T x heads x head_dim", "LlamaGen us", "ours us", "speed-up", "round range"], rows)
    C.write_json("rope_speed", {"benchmark": "rope_speed", "machine": C.machine(device),
                                "settings": {"repeats": repeats, "calls": calls}, "results": report},
                 args.out, args.quick)


if __name__ == "__main__":
    main()
