"""Sampling: KV-cache decoding with classifier-free guidance."""

from mirai.sampling.generate import draw_tokens, filter_logits, generate, guide, guided_probs, token_probs

__all__ = ["generate", "filter_logits", "guide", "guided_probs", "token_probs", "draw_tokens"]
