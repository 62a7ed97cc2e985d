"""Sampling: KV-cache decoding with classifier-free guidance."""

from mirai.sampling.generate import filter_logits, generate, guide, sample_logits

__all__ = ["generate", "filter_logits", "guide", "sample_logits"]
