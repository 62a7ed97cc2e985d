"""Models: LlamaGen's GPT and VQ tokenizer, with named configs (``GPT_CONFIGS``, ``VQ_CONFIGS``)."""

from mirai.models.gpt import GPT, GPTArgs
from mirai.models.registry import GPT_CONFIGS, build_gpt, gpt_args
from mirai.models.vq import VQ_CONFIGS, VQArgs, VQModel, build_vq, vq_from_llamagen_state

__all__ = [
    "GPT", "GPTArgs", "GPT_CONFIGS", "build_gpt", "gpt_args",
    "VQModel", "VQArgs", "VQ_CONFIGS", "build_vq", "vq_from_llamagen_state",
]
