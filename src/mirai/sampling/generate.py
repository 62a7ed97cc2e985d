"""Autoregressive decoding with a KV cache and classifier-free guidance on logits."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from mirai.errors import ConfigError
from mirai.models.gpt import GPT
from mirai.sampling.checks import as_labels, check_guidance, check_sampling, in_guidance_interval


GRAPH_LIMIT = 64  # compiled decoding graphs kept per process (Dynamo's recompile_limit while generate runs)
Scalar = float | torch.Tensor  # a Python number, or a 0-dim tensor in a compiled pass (a new value, no new graph)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: Scalar | None = None) -> torch.Tensor:
    """Set to -inf every logit of (..., V) ``logits`` outside the top-k, and outside the smallest set whose
    probability reaches top-p (the most likely token is always kept). A ``top_k`` outside (0, V) or a Python
    ``top_p`` outside (0, 1) filters nothing; a 0-dim tensor ``top_p`` (a compiled pass's input) must lie inside."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and not isinstance(top_p, torch.Tensor) and not 0.0 < top_p < 1.0:
        top_p = None
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass. The first is never
        # dropped: a top_p that rounds to 0 at the logits' precision (1e-300 in float32) would drop them all.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def guide(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: the batch holds [cond; uncond]; returns uncond + s (cond - uncond)."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + cfg_scale * (cond - uncond)


def token_probs(logits: torch.Tensor, temperature: Scalar | None = 1.0, top_k: int | None = None,
                top_p: Scalar | None = None) -> torch.Tensor:
    """What a draw reads from (..., V) logits: probabilities after temperature and top-k/top-p
    filtering, or, for ``temperature=None`` (greedy), the logits themselves (the draw takes their argmax)."""
    if temperature is None:
        return logits
    return filter_logits(logits / temperature, top_k, top_p).softmax(-1)


def draw_tokens(probs: torch.Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of (B, V) ``token_probs`` output: its argmax if ``greedy``, else a draw."""
    if greedy:
        return probs.argmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def guided_probs(logits: torch.Tensor, guide_now: torch.Tensor, cfg_scale: Scalar | None, temperature: Scalar | None,
                 top_k: int | None, top_p: Scalar | None) -> torch.Tensor:
    """``token_probs`` (B, W, V) of one decoding pass's logits (B', W, V). With guidance (``cfg_scale`` not
    None) the B' = 2B rows are [cond; uncond], mixed by ``guide`` where the 0-dim bool ``guide_now`` is
    True and the conditional rows taken as they are elsewhere (a tensor, so that a compiled pass
    serves both sides of a guidance interval with one graph)."""
    if cfg_scale is not None:
        logits = torch.where(guide_now, guide(logits, cfg_scale), logits.chunk(2, dim=0)[0])
    return token_probs(logits, temperature, top_k, top_p)


def _not_finite(cfg_scale: float, temperature: float, dtype: torch.dtype) -> ConfigError:
    """The error for a draw whose probabilities overflowed: finite but extreme values (a temperature near 0
    divides the logits past the float range, a huge guidance scale multiplies them past it)."""
    return ConfigError(
        f"the sampling values gave non-finite token probabilities (cfg_scale {cfg_scale:g}, temperature "
        f"{temperature:g}, {str(dtype).removeprefix('torch.')}): the logits left the float range; use a temperature "
        "of 0 (greedy) or at least 1e-3, and a guidance scale below 1e3")


@torch.no_grad()
def generate(
    model: GPT,
    labels: torch.Tensor | Sequence[int],
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    guidance_interval: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
    use_kv_cache: bool = True,
    compile: bool = False,
) -> torch.Tensor:
    """Sample token grids (B, N), in raster order, for class ``labels`` (B,).

    Decoding follows the model's schedule (``GPT.decode_schedule``): one token per forward pass
    in raster order, or PAR's n + N/n - 1 passes (n tokens per parallel pass, one independent
    draw per position, the guidance mixed position by position).

    ``cfg_scale`` != 1 runs the conditional and unconditional (null class) halves in one batch
    and mixes their logits; ``guidance_interval=(a, b)`` applies guidance only to the
    fraction [a, b) of the sequence (plain conditional logits elsewhere). ``dtype`` bf16
    runs under autocast. ``use_kv_cache=False`` recomputes the whole prefix every step
    (slow; the reference the cache is tested against).

    The KV cache is static (``mirai.models.decoding``): every pass has the same shapes, so
    ``compile=True`` runs the passes through one ``torch.compile(fullgraph=True)`` graph, built on
    the first call for a model, batch size, dtype and top-k, and for which of guidance, greedy decoding
    and top-p are on, and reused after that: no recompilation per step, nor for a new guidance scale,
    temperature or top-p, which enter as tensors.
    The graph takes each pass from its embeddings to the draw's probabilities (guidance,
    temperature, top-k/top-p and softmax included); the draw itself stays eager, so in fp32 the same
    ``generator`` draws the same tokens; under bf16 autocast the compiled kernels round differently
    from eager ones, and draws can differ.

    Every value is checked first (``mirai.sampling.checks``): labels must be class ids in
    [0, num_classes) (a tensor keeps its device; a list goes to the model's), guidance needs a
    model trained with class dropout; a bad value raises ``ConfigError``.
    """
    args = model.args
    check_sampling(cfg_scale, temperature, top_k, top_p, guidance_interval, vocab_size=args.vocab_size)
    check_guidance(args, cfg_scale, guidance_interval)
    if compile and not use_kv_cache:
        raise ConfigError("compile=True compiles the KV-cache decoding pass; it needs use_kv_cache=True")
    device = labels.device if isinstance(labels, torch.Tensor) else next(model.parameters()).device
    labels = as_labels(labels, args.num_classes, device)
    n_tokens = args.seq_len
    batch = labels.size(0)
    guided = cfg_scale != 1.0
    cond = torch.cat([labels, torch.full_like(labels, args.num_classes)]) if guided else labels
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    # Tokens in the model's own order (raster, or PAR's); a pass may sample several at once.
    sequence = torch.zeros(batch, n_tokens, dtype=torch.long, device=device)
    guide_now = [torch.tensor(flag, device=device) for flag in (False, True)]
    greedy = temperature == 0
    # Guidance scale, temperature and top-p, None where off: whether each is on shapes the graph; a new value
    # does not. top-k stays a Python int, a constant of the graph: torch.topk takes no tensor k, and the full
    # sort that could read a tensor one takes several times topk's time per pass on CPU.
    scale = cfg_scale if guided else None
    temp = None if greedy else temperature
    nucleus = top_p if top_p is not None and top_p < 1 else None
    if compile:  # graph inputs, so that a new guidance scale, temperature or top-p reuses the graph
        scale, temp, nucleus = (None if x is None else torch.tensor(x, device=device) for x in (scale, temp, nucleus))

    def cached_pass(h: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
                    guided_here: torch.Tensor, scale: Scalar | None, temp: Scalar | None,
                    nucleus: Scalar | None) -> torch.Tensor:
        logits = model.decode_step(h, positions, slots, mask)
        return guided_probs(logits, guided_here, scale, temp, top_k, nucleus)

    try:
        plan = model.setup_kv_cache(cond.size(0), dtype=dtype if dtype != torch.float32 else None) if use_kv_cache \
            else None
        # The whole pass after the embedding lookup (transformer, guidance, temperature, filtering,
        # softmax) is one graph; only the draw stays eager, so that the generator's draws are eager's.
        run_pass = torch.compile(cached_pass, fullgraph=True, dynamic=False) if compile else cached_pass
        with autocast, contextlib.ExitStack() as stance:
            if compile:  # Dynamo's default of 8 graphs per function would end a sweep over top-k or batch sizes
                limit = max(torch._dynamo.config.recompile_limit, GRAPH_LIMIT)
                stance.enter_context(torch._dynamo.config.patch(recompile_limit=limit))
            for i, step in enumerate(model.decode_schedule()):
                k = len(step.produce)
                guided_here = guide_now[in_guidance_interval(step.produce[0], n_tokens, guidance_interval)]
                if plan is None:
                    context = sequence[:, : step.produce[0]]
                    logits = model.logits_at(context.repeat(2, 1) if guided else context, cond, step.produce)
                    probs = guided_probs(logits, guided_here, scale, temp, top_k, nucleus)
                else:
                    fed = sequence[:, list(step.feed)]
                    h = model.pass_inputs(step, fed.repeat(2, 1) if guided else fed, cond)
                    if h.size(1) < plan.width:  # the plan's padding rows lead
                        h = F.pad(h, (0, 0, plan.width - h.size(1), 0))
                    try:
                        probs = run_pass(h, plan.positions[i], plan.slots[i], plan.masks[i], guided_here, scale, temp,
                                         nucleus)[:, -k:]
                    except torch._dynamo.exc.FailOnRecompileLimitHit:
                        raise ConfigError(
                            f"compiled decoding has built {limit} graphs in this process (one per model, batch "
                            "size, dtype, top-k and choice of guidance, greedy decoding and top-p): call "
                            "torch.compiler.reset() between sweeps, or sample without compile") from None
                    if compile and i == 0:
                        # The first pass chose the graph; every later pass of this call has the same shapes,
                        # dtypes and module, so re-checking Dynamo's guards each pass (0.3 ms, about 5 % of a small
                        # GPT's pass on CPU, benchmarks/RESULTS.md section 6) buys nothing.
                        stance.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
                if i == 0 and not bool(torch.isfinite(probs).all()):  # one host read, before CUDA's draw asserts
                    raise _not_finite(cfg_scale, temperature, dtype)
                try:
                    next_tokens = draw_tokens(probs.reshape(batch * k, -1), greedy, generator)
                except RuntimeError as err:  # a later pass's overflow: CPU's multinomial refuses inf/NaN
                    if "probability tensor" not in str(err):
                        raise
                    raise _not_finite(cfg_scale, temperature, dtype) from None
                sequence[:, list(step.produce)] = next_tokens.view(batch, k)
    finally:
        model.clear_kv_cache()
        model.train(was_training)
    return model.from_sequence(sequence)
